"""Colab's Python, for real: a fresh Python 3.12 environment (Colab's version), the notebooks' install cell run
unmocked against this checkout (pip installs the pins and the kit from the local folder, non-editable, as it would
from GitHub), then notebooks 01 and 00 executed on the tiny recipe in that environment. Needs a Python 3.12 and the
package index; takes a few minutes and ~6 GB of disk while it runs (all of it in a temporary folder, removed after).

    python tools/colab_check.py [--python /path/to/python3.12] [--keep]
"""
import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from mpi_kit.folders import scratch_folder  # noqa: E402
NOTEBOOKS = ("01_policies.ipynb", "00_quickstart.ipynb")
COLAB_PREINSTALLED = ("numpy", "pandas", "pillow", "plotly", "ipywidgets", "ipykernel", "nbclient", "nbformat",
                      "pyyaml", "tqdm")  # what a Colab runtime already has; the install cell keeps them
RUN = """import sys, time, nbformat
from nbclient import NotebookClient
for name in sys.argv[2:]:
    nb = nbformat.read(f"{sys.argv[1]}/notebooks/{name}", as_version=4)
    t = time.time()
    NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": "."}}).execute()
    errors = [o.get("ename") for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    stderr = [o["text"][:200] for c in nb.cells for o in c.get("outputs", []) if o.get("name") == "stderr"]
    print(f"{name}: {time.time() - t:.1f} s, errors {errors}, stderr {stderr}", flush=True)
    if errors or stderr:
        sys.exit(1)
"""


def step(what: str, cmd: list, **kw) -> float:
    t = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode:
        sys.exit(f"{what} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    print(f"{what}: {time.time() - t:.0f} s" + (f"\n{r.stdout.strip()}" if r.stdout.strip() else ""), flush=True)
    return time.time() - t


def _python312() -> str:
    """The first Python 3.12 that runs (a pyenv shim on PATH may not)."""
    for c in (shutil.which("python3.12"), *sorted(Path.home().glob(".pyenv/versions/3.12*/bin/python"))):
        if c and subprocess.run([str(c), "--version"], capture_output=True).returncode == 0:
            return str(c)
    return "python3.12"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--python", default=_python312(), help="a Python 3.12 (default: the first that runs)")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (its path is printed)")
    a = p.parse_args()
    if subprocess.run([a.python, "--version"], capture_output=True).returncode:
        sys.exit(f"no Python 3.12 runs as {a.python}; pass --python /path/to/python3.12")
    with scratch_folder("colab-check-", keep=a.keep) as work:  # its own new folder: the only thing it removes
        if a.keep:
            print("keeping", work)
        src = work / "checkout"
        step("a clean copy of this checkout", ["git", "clone", "-q", str(ROOT), str(src)])
        py = work / "venv" / "bin" / "python"
        step("Python 3.12 environment", [a.python, "-m", "venv", str(work / "venv")])
        step("what Colab has preinstalled", [str(py), "-m", "pip", "install", "-q", *COLAB_PREINSTALLED])
        cell = json.loads((src / "notebooks" / NOTEBOOKS[1]).read_text())["cells"][1]["source"]
        cell = cell.replace('f"mpi-kit @ git+https://github.com/{REPO}"', repr(str(src)))
        cell = cell.replace("REPO = ", "REPO = 'local/checkout'  # was: ", 1)
        (work / "install_cell.py").write_text(cell)
        step("the notebooks' install cell (pins, then the kit from this checkout)",
             [str(py), str(work / "install_cell.py")], cwd=work)
        (work / "run.py").write_text(RUN)
        step("notebooks on the tiny recipe", [str(py), str(work / "run.py"), str(src), *NOTEBOOKS], cwd=work)
        version = subprocess.run([str(py), "--version"], capture_output=True, text=True).stdout.strip()
        print(f"Colab check passed on {version}")


if __name__ == "__main__":
    main()
