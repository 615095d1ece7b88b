"""The project's set-up: one pinned version set, shared by pyproject.toml and environment.yml, that unsloth accepts."""
import re
import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
# Requires-Dist of unsloth 2026.10.9 / unsloth_zoo 2026.10.9 (their METADATA) for the packages we pin.
UNSLOTH_CAPS = {
    "torch": "<2.15.0,>=2.4.0",
    "transformers": "!=4.53.0,!=4.54.0,!=4.55.0,!=4.55.1,!=4.57.0,!=4.57.4,!=4.57.5,!=5.0.0,!=5.1.0,<=5.17.0,>=4.52.4",
    "trl": "!=0.19.0,<=1.15.0,>=0.18.2",
    "datasets": "!=4.0.*,!=4.1.0,!=4.4.*,!=4.5.0,<5.0.0,>=3.4.1",
    "peft": "!=0.11.0,>=0.18.0",
    "bitsandbytes": "!=0.46.0,!=0.48.0,>=0.45.5",
    "accelerate": ">=0.34.1",
}


def pins() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = project["dependencies"] + project["optional-dependencies"]["dev"]
    out = {}
    for r in map(Requirement, reqs):
        spec = str(r.specifier)
        assert spec.startswith("==") and "," not in spec, f"{r} is not pinned to one version"
        out[r.name.lower()] = spec[2:]
    return out


def test_environment_yml_pins_the_same_versions():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_list = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    from_env = {Requirement(r).name.lower(): str(Requirement(r).specifier)[2:] for r in pip_list}
    assert from_env == pins()
    assert "python=3.11" in env["dependencies"]


def test_pins_admit_unsloth():
    p = pins()
    for name, spec in UNSLOTH_CAPS.items():
        assert Requirement(f"{name}{spec}").specifier.contains(p[name]), f"{name}=={p[name]} breaks unsloth: {spec}"
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["unsloth"]
    assert {Requirement(r).name for r in extra} == {"unsloth", "unsloth_zoo"}


def test_installed_versions_match_pins():
    from importlib.metadata import version

    mismatched = {n: (v, version(n)) for n, v in pins().items() if version(n) != v}
    assert not mismatched, f"installed versions differ from the pins (run `make test` to reinstall): {mismatched}"


def test_ci_calls_the_readme_test_command():
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme and "make demo" in readme


def test_the_linter_passes():
    """ruff with the configuration in pyproject.toml (TRL's 119 columns; pycodestyle and pyflakes)."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", str(ROOT)], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]


def import_graph() -> dict[str, set[str]]:
    """mpi_kit's modules and the mpi_kit modules each imports, at the top or inside a function."""
    import ast

    mods = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
            for p in (ROOT / "mpi_kit").rglob("*.py")}
    graph = {m: set() for m in mods}
    for m, p in mods.items():
        package = m if p.name == "__init__.py" else m.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom):
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1]) if node.level else ""
                target = ".".join(x for x in (base, node.module) if x)
                names = [target] + [f"{target}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            graph[m] |= {n for n in names if n in mods and n != m}
    return graph


def test_the_import_graph_has_no_circle():
    graph = import_graph()
    assert graph["mpi_kit.pipeline"] >= {"mpi_kit.tasks"} and "mpi_kit.report" in graph["mpi_kit.tasks.clevr.report"]

    def reaches(a, b):
        seen, todo = set(), [a]
        while todo:
            for n in graph[todo.pop()] - seen:
                seen.add(n)
                todo.append(n)
        return b in seen

    circles = sorted(f"{a} <-> {b}" for a in graph for b in graph[a] if a < b and reaches(b, a))
    assert not circles, f"modules that import each other (directly or through others): {circles}"


# what a measured number looks like in prose: "19% slower", "~15x faster", "~15 min", "240 give 77%", "133 s quiet"
MEASURED = [re.compile(p) for p in (
    r"\b\d+(?:\.\d+)?\s?%\s(?:slower|faster|fewer|less|more|of the time)",
    r"~?\d+(?:\.\d+)?x\s(?:slower|faster)",
    r"~\s?\d+(?:\.\d+)?\s?(?:s|ms|min|minutes|seconds|hours|h)\b",
    r"\b(?:gives?|reach(?:es)?|scores?|took|takes)\s~?\d+(?:\.\d+)?\s?(?:%|s\b|min)",
    r"\b\d+(?:\.\d+)?\s?(?:s|min|minutes|seconds)\s(?:quiet|here|on (?:this|2|a) )")]


def _comments_and_docstrings(path: Path):
    import ast
    import io
    import tokenize

    src = path.read_text()
    for tok in tokenize.generate_tokens(io.StringIO(src).readline):
        if tok.type == tokenize.COMMENT:
            yield tok.start[0], tok.string
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=False)
            if doc:
                yield node.body[0].lineno, doc


def test_no_measured_number_in_code_comments_or_docstrings():
    """Measured numbers live in docs and cards, written once; code cites them (they go stale in a comment)."""
    found = []
    for folder in ("mpi_kit", "scripts", "benchmarks", "tools"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for line, text in _comments_and_docstrings(path):
                found += [f"{path.relative_to(ROOT)}:{line}: {m.group(0)!r}" for p in MEASURED
                          for m in p.finditer(text)]
    assert not found, "measured numbers in code (move them to docs/ and cite the doc):\n" + "\n".join(found)
    assert MEASURED[3].search("240 steps give 77%, 480 93.5%") and MEASURED[2].search("~15 min")


def test_no_module_outside_tasks_imports_a_tasks_internals():
    """Everything outside `mpi_kit/tasks/` reaches a task through the registry (`mpi_kit.tasks`: get_task,
    task_of) and the `Task` interface, never a task's own modules, so a third task is one folder and one
    registration. The exercises are the one exception: like the notebooks, they hand a learner one task's pieces
    (walking a ClevrPolicy tree, its rewards)."""
    graph = import_graph()
    outside = {m: deps for m, deps in graph.items() if not m.startswith("mpi_kit.tasks")
               and not m.startswith("mpi_kit.exercises")}
    reach = sorted(f"{m} -> {d}" for m, deps in outside.items() for d in deps
                   if d.startswith("mpi_kit.tasks.") and d != "mpi_kit.tasks.base")
    assert not reach, f"modules that import a task's internals: {reach}"
    assert {"mpi_kit.tasks.clevr.data", "mpi_kit.tasks.gta.data"} <= set(graph)
