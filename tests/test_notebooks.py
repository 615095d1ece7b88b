"""Every notebook runs top to bottom headless on the tiny recipe, and is committed without outputs."""
import ast
import json
import re
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
    ids = [c.get("id") for c in nb["cells"]]
    assert None not in ids and len(set(ids)) == len(ids), f"{path.name}: every cell needs its own id"
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


# What a class reads as an error or as noise in a printed line: a dict's or list's repr, a dataclass repr, a
# summary dumped as JSON (nested objects, or indented one key a line). A notebook prints a sentence or a table.
RAW = {"a dict's repr": re.compile(r"\{'|\{\d+: "), "a list's repr": re.compile(r"\['"),
       "a dataclass repr": re.compile(r"\b[A-Z]\w*\(\w+="),
       "JSON": re.compile(r'\{"\w+": \{|^\s*[{}]\s*$|^\s*"\w+": [^,]*,?$')}
MAX_COLUMNS = 7  # a wider table is clipped at the right of a notebook
# 00 and 06 are edited in another change; they join these checks once their raw output is gone (issue 32)
NOT_YET_CHECKED: set[str] = set()


def raw_output(nb) -> list[str]:
    """Printed lines (stdout streams only) that read as raw Python or JSON rather than a sentence."""
    lines = [line for c in nb.cells for o in c.get("outputs", []) if o.get("name") == "stdout"
             for line in "".join(o["text"]).splitlines()]
    return [f"{what}: {line[:160]}" for line in lines for what, pattern in RAW.items() if pattern.search(line)]


def unreadable_tables(nb) -> list[str]:
    """Displayed pandas tables with a snake_case header or more than MAX_COLUMNS columns."""
    out = []
    for c in nb.cells:
        for o in c.get("outputs", []):
            page = "".join(o.get("data", {}).get("text/html", ""))
            if 'class="dataframe"' not in page:
                continue
            head = page.split("<tbody>")[0]
            snake = [h for h in re.findall(r"<th[^>]*>([^<]*)</th>", head) if "_" in h]
            body = page.split("<tbody>")[1].split("</tr>")[0] if "<tbody>" in page else ""
            if snake or body.count("<td") > MAX_COLUMNS:
                out.append(f"{c.id}: headers {snake}, {body.count('<td')} columns")
    return out


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path):
    nb = nbformat.read(path, as_version=4)
    t0 = time.time()
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    # a warning box reads as an error to a class: no cell may write to stderr on the tiny recipe
    stderr = [o["text"][:200] for c in nb.cells for o in c.get("outputs", []) if o.get("name") == "stderr"]
    assert not stderr, f"{path.name} writes to stderr: {stderr}"
    if path.name not in NOT_YET_CHECKED:  # a sentence or a readable table, never a repr or a clipped table
        assert not raw_output(nb), f"{path.name} prints raw output: {raw_output(nb)}"
        assert not unreadable_tables(nb), f"{path.name}: {unreadable_tables(nb)}"
    print(f"{path.name}: {time.time() - t0:.1f} s")


@pytest.mark.slow
def test_notebook_06_twice_gives_the_same_steps_and_files(tmp_path):
    """Rerunning the PolicyRollout notebook in the same folder reuses its finished stages: the same step counts,
    the same files, no extra step or rollout log (it used to train one more step per rerun)."""
    path = next(p for p in NOTEBOOKS if p.name.startswith("06_"))

    def run():
        nb = nbformat.read(path, as_version=4)
        NotebookClient(nb, timeout=600, kernel_name="python3",
                       resources={"metadata": {"path": str(tmp_path)}}).execute()
        steps = {str(p.relative_to(tmp_path)): json.loads(p.read_text()).get("steps")
                 for p in tmp_path.rglob("summary.json") if "checkpoint-" not in str(p)}
        files = {str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()}
        return steps, files

    first = run()
    assert any(v for v in first[0].values())
    assert run() == first
