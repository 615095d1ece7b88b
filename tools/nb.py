"""Helpers to write a notebook from (kind, source) cells, with the kit's standard first cells.

Notebooks are the teaching surface; their logic lives in mpi_kit. Each starts with its title, a Colab badge and the
runtime to pick, an install cell, and a `RECIPE` parameter cell (tiny on a CPU; a GPU recipe in Colab), with
`SCALE` (tutorial or paper) in the notebooks that run a model on the GPU.
"""
import functools
import json
import sys
from pathlib import Path

# The one place that names the repository: the Colab badges, every notebook's install cell and the README use it.
# Set this to where your copy lives (GitHub "owner/name", e.g. after forking), then run `python tools/nb.py`.
REPO = "your-github-user/mpi-kit"
REPO_PLACEHOLDER = "your-github-user/mpi-kit"  # what REPO is until it is set; the install cell refuses it
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # mpi_kit from this checkout: the GPU notebooks and their estimated times


def badge(name: str) -> str:
    return (f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
            f"(https://colab.research.google.com/github/{REPO}/blob/main/notebooks/{name})")


def colab_pins() -> list[str]:
    """The pins the install cell carries: the GPU-relevant core of pyproject.toml (tests check they match)."""
    import tomllib

    deps = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())["project"]
    core = ("torch", "torchvision", "transformers", "trl", "peft", "accelerate", "bitsandbytes", "datasets")
    return [d for d in deps["dependencies"] if d.split("==")[0] in core]


# Colab's preinstalled CUDA torch is kept, as Unsloth's Colab notebooks keep it: it is built for Colab's GPU driver,
# and a PyPI torch is ~3 GB of CUDA wheels. The pinned libraries install with their dependencies (pip replaces torch
# only if one of them needs another version); mpi-kit itself with --no-deps, so Colab's numpy, pandas, pillow, plotly
# and ipywidgets, already loaded by a running kernel, are not swapped under it. tests/test_colab.py runs this cell.
INSTALL = """# Colab: install mpi-kit quietly, about 1-2 min (an estimate); rerun, or in a checkout, it does nothing.
# Colab's own CUDA torch is kept (built for its GPU driver); replacing it would add ~3 GB of CUDA wheels,
# about 3-5 min more (an estimate). mpi-kit goes in with --no-deps: Colab's numpy/pandas/plotly stay.
import importlib, importlib.metadata as md, importlib.util, subprocess, sys
REPO = "@REPO@"  # GitHub owner/name of your copy (set it in tools/nb.py: REPO)
PINS = @PINS@
if importlib.util.find_spec("mpi_kit") is None:
    if REPO == "@PLACEHOLDER@":
        raise RuntimeError("Set REPO to the GitHub owner/name of your copy of mpi-kit (tools/nb.py: REPO, then "
                           "`python tools/nb.py` rewrites every notebook), or edit REPO in this cell, and rerun it.")
    have = lambda name: importlib.util.find_spec(name) is not None
    keep = [p for p in PINS if p.split("==")[0] in ("torch", "torchvision") and have(p.split("==")[0])]
    torch_before = md.version("torch") if keep else None
    for args in ([p for p in PINS if p not in keep], ["--no-deps", f"mpi-kit @ git+https://github.com/{REPO}"]):
        r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", *args], capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError(f"pip install {' '.join(args)} failed:\\n{r.stdout[-2000:]}{r.stderr[-2000:]}")
    importlib.invalidate_caches()
    torch_now = md.version("torch")
    if torch_before and torch_now != torch_before and "torch" in sys.modules:
        print(f"pip replaced torch {torch_before} with {torch_now}: restart the session (Runtime > Restart session)")
    print(f"mpi-kit installed; torch {torch_now}" + (" (Colab's, kept)" if torch_now == torch_before else ""))
"""
INSTALL = INSTALL.replace("@REPO@", REPO).replace("@PLACEHOLDER@", REPO_PLACEHOLDER).replace(
    "@PINS@", repr(colab_pins())).strip("\n")
RECIPE_CELL = ('RECIPE = "auto"  # "auto": tiny on a CPU, qwen2.5-vl-3b on a T4 (16 GB), qwen2.5-vl-7b on an L4/A100; '
               'or name one')
SCALE_LINE = ('SCALE = "tutorial"  # GPU recipes: "tutorial" fits a free Colab T4; "paper": the paper\'s data and '
              'schedules (hours to days)')


def gpu_notebook(name: str) -> bool:
    """Notebooks that train or generate with the recipe's model (the others need no GPU)."""
    from mpi_kit.scales import GPU_NOTEBOOKS

    return Path(name).stem in GPU_NOTEBOOKS


@functools.lru_cache(maxsize=None)
def _t4_minutes() -> dict:
    from mpi_kit.scales import notebook_minutes

    return notebook_minutes("tutorial", "qwen2.5-vl-3b", "T4")


def runtime_line(name: str) -> str:
    """What the first markdown cell says about the Colab runtime to pick (and, on a GPU, how long by estimate)."""
    if not gpu_notebook(name):
        return "**Runtime:** CPU. This notebook trains and loads no model, so any Colab runtime works."
    return (f"**Runtime:** CPU for the built-in `tiny` model (minutes). **T4 GPU** for `qwen2.5-vl-3b` (Colab: "
            f"Runtime > Change runtime type > T4 GPU): at `SCALE = \"tutorial\"` about "
            f"{_t4_minutes()[Path(name).stem]:g} min of training and generation on a T4 by the kit's estimate "
            f"(`mpi_kit.scales`; not a measurement), plus the install and the model download.")


def first_cell(name: str, title: str) -> str:
    return f"{title}\n\n{badge(name)}\n\n{runtime_line(name)}"


def parameter_cell(name: str, src: str) -> str:
    """The standard RECIPE (and, in GPU notebooks, SCALE) lines, then the rest of the cell as it was."""
    lines = src.split("\n")
    while lines and lines[0].startswith(("RECIPE =", "SCALE =")):
        lines.pop(0)
    head = [RECIPE_CELL] + ([SCALE_LINE] if gpu_notebook(name) else [])
    return "\n".join(head + lines)


def cell(kind: str, src: str, tags=None) -> dict:
    c = {"cell_type": kind, "metadata": {"tags": tags} if tags else {}, "source": src.strip("\n")}
    if kind == "code":
        c.update(outputs=[], execution_count=None)
    return c


def notebook(name: str, title: str, cells: list[tuple[str, str]]) -> dict:
    head = [cell("markdown", first_cell(name, f"# {title}")), cell("code", INSTALL)]
    # the RECIPE (and SCALE) lines are always the standard ones; the rest of that cell is kept
    cells = [(k, parameter_cell(name, src) if src.startswith("RECIPE =") else src) for k, src in cells]
    cells = head + [cell(k, s, ["parameters"] if s.startswith("RECIPE =") else None) for k, s in cells]
    for i, c in enumerate(cells):
        c["id"] = f"{Path(name).stem[:2]}-{i:02d}"
    return {"cells": cells,
            "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                         "language_info": {"name": "python"}},
            "nbformat": 4, "nbformat_minor": 5}


def write(name: str, title: str, cells) -> None:
    path = Path(__file__).resolve().parent.parent / "notebooks" / name
    path.write_text(json.dumps(notebook(name, title, cells), indent=1) + "\n")
    print("wrote", path)


def refresh(path: Path) -> bool:
    """Rewrite a notebook's standard cells in place (title + badge + runtime, install cell, RECIPE/SCALE lines),
    keeping everything else; strips outputs. Returns True if the file changed."""
    nb = json.loads(path.read_text())
    cells = nb["cells"]
    title = cells[0]["source"] if isinstance(cells[0]["source"], str) else "".join(cells[0]["source"])
    cells[0]["source"] = first_cell(path.name, title.splitlines()[0])
    cells[1]["source"] = INSTALL
    for c in cells:
        src = c["source"] if isinstance(c["source"], str) else "".join(c["source"])
        if c["cell_type"] == "code":
            c["outputs"], c["execution_count"] = [], None
            if src.startswith("RECIPE ="):
                src = parameter_cell(path.name, src)
                c["metadata"]["tags"] = ["parameters"]
        c["source"] = src
    nb["metadata"].pop("widgets", None)
    new = json.dumps(nb, indent=1) + "\n"
    changed = new != path.read_text()
    path.write_text(new)
    return changed


README_START, README_END = "<!-- tools/nb.py writes this line from REPO -->", "<!-- end of tools/nb.py's line -->"


def readme_block() -> str:
    """The README's line naming the repository, with the quickstart notebook's badge."""
    return (f"{README_START}\nRepository: `{REPO}` (set in `tools/nb.py`: REPO) · "
            f"{badge('00_quickstart.ipynb')}\n{README_END}")


def refresh_readme(path: Path = ROOT / "README.md") -> bool:
    """Rewrite the README's repository line (between the markers) from REPO. Returns True if the file changed."""
    text = path.read_text()
    head, start, rest = text.partition(README_START)
    if not start:
        raise ValueError(f"{path} has no {README_START!r} line to rewrite")
    new = head + readme_block() + rest.partition(README_END)[2]
    path.write_text(new)
    return new != text


if __name__ == "__main__":  # python tools/nb.py: refresh the standard cells of every notebook, and the README line
    for p in sorted((ROOT / "notebooks").glob("*.ipynb")):
        print(("refreshed " if refresh(p) else "unchanged ") + p.name)
    print(("refreshed " if refresh_readme() else "unchanged ") + "README.md")
