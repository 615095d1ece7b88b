"""Helpers to write a notebook from (kind, source) cells, with the kit's standard first cells.

Notebooks are the teaching surface; their logic lives in mpi_kit. Each starts with a Colab badge and an
install cell, and a `RECIPE` parameter cell (tiny on a CPU; a GPU recipe in Colab).
"""
import json
import sys
from pathlib import Path

REPO = "mpi-kit/mpi-kit"  # GitHub path used by the Colab badge and the install cell


def badge(name: str) -> str:
    return (f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
            f"(https://colab.research.google.com/github/{REPO}/blob/main/notebooks/{name})")


def colab_pins() -> list[str]:
    """The pins the install cell carries: the GPU-relevant core of pyproject.toml (tests check they match)."""
    import tomllib

    deps = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())["project"]
    core = ("torch", "torchvision", "transformers", "trl", "peft", "accelerate", "bitsandbytes", "datasets")
    return [d for d in deps["dependencies"] if d.split("==")[0] in core]


INSTALL = f'''# Colab: install mpi-kit with the pinned, tested versions (a checkout already has them: then this does nothing).
import importlib.util, subprocess, sys
PINS = {colab_pins()!r}
if importlib.util.find_spec("mpi_kit") is None:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", *PINS, "mpi-kit @ git+https://github.com/{REPO}"],
                   check=True)'''
RECIPE_CELL = '''RECIPE = "auto"  # "auto": tiny on a CPU, qwen2.5-vl-3b on a T4 (16 GB), qwen2.5-vl-7b on an L4/A100; or name one'''


def cell(kind: str, src: str, tags=None) -> dict:
    c = {"cell_type": kind, "metadata": {"tags": tags} if tags else {}, "source": src.strip("\n")}
    if kind == "code":
        c.update(outputs=[], execution_count=None)
    return c


def notebook(name: str, title: str, cells: list[tuple[str, str]]) -> dict:
    head = [cell("markdown", f"# {title}\n\n{badge(name)}"), cell("code", INSTALL)]
    # the RECIPE line is always the standard one (auto-picks by GPU); the rest of that cell is kept
    cells = [(k, RECIPE_CELL + "".join(src.partition("\n")[1:]) if src.startswith("RECIPE =") else src)
             for k, src in cells]
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
    """Rewrite a notebook's standard cells in place (badge, install cell with current pins, the RECIPE line),
    keeping everything else; strips outputs. Returns True if the file changed."""
    nb = json.loads(path.read_text())
    cells = nb["cells"]
    title = cells[0]["source"] if isinstance(cells[0]["source"], str) else "".join(cells[0]["source"])
    cells[0]["source"] = f"{title.splitlines()[0]}\n\n{badge(path.name)}"
    cells[1]["source"] = INSTALL
    for c in cells:
        src = c["source"] if isinstance(c["source"], str) else "".join(c["source"])
        if c["cell_type"] == "code":
            c["outputs"], c["execution_count"] = [], None
            if src.startswith("RECIPE ="):
                src = RECIPE_CELL + "".join(src.partition("\n")[1:])
                c["metadata"]["tags"] = ["parameters"]
        c["source"] = src
    nb["metadata"].pop("widgets", None)
    new = json.dumps(nb, indent=1) + "\n"
    changed = new != path.read_text()
    path.write_text(new)
    return changed


if __name__ == "__main__":  # python tools/nb.py: refresh the standard cells of every notebook
    for p in sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb")):
        print(("refreshed " if refresh(p) else "unchanged ") + p.name)
