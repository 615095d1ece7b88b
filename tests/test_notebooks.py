"""Every notebook runs top to bottom headless on the tiny recipe, and is committed without outputs."""
import ast
import json
import time
import tomllib
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_committed_without_outputs(path):
    nb = json.loads(path.read_text())
    assert not any(c.get("outputs") for c in nb["cells"]), f"{path.name}: strip outputs before committing"
    assert "widgets" not in nb["metadata"]
    first = nb["cells"][0]["source"]
    assert "colab-badge.svg" in first and path.name in first
    assert "pip" in nb["cells"][1]["source"]
    assert any(c["source"].startswith('RECIPE = "auto"') for c in nb["cells"])


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_install_cell_pins_match_pyproject(path):
    src = json.loads(path.read_text())["cells"][1]["source"]
    pins = ast.literal_eval(next(line for line in src.splitlines() if line.startswith("PINS = "))[7:])
    project = tomllib.loads((path.parent.parent / "pyproject.toml").read_text())["project"]["dependencies"]
    assert {"torch", "transformers", "trl", "peft", "bitsandbytes"} <= {p.split("==")[0] for p in pins}
    assert set(pins) <= set(project), f"{path.name}: install-cell pins differ from pyproject.toml"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path):
    nb = nbformat.read(path, as_version=4)
    t0 = time.time()
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    print(f"{path.name}: {time.time() - t0:.1f} s")
