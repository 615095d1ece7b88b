"""Notebook views of policies: the explorer's CoT is cut only where a step starts, the SVG tree is labelled
(condition ids / questions, yes / no, cases), a policy shown in a cell is cut between lines with the cut marked,
and notebook 01 leaves nothing beside itself when it runs."""
import re
import shutil
from pathlib import Path

import pytest

from mpi_kit.tasks.clevr.policy import sample_policy
from mpi_kit.tasks.clevr.scenes import sample_scene, sample_scenes
from mpi_kit.tasks.clevr.widgets import cot_steps, policy_explorer, tree_svg, walk_html
from mpi_kit.widgets import excerpt

ROOT = Path(__file__).resolve().parent.parent


def test_cot_is_cut_at_step_starts_only():
    policy, scene = sample_policy(depth=4, rng=0), sample_scene(3)
    case, path = policy.evaluate(scene)
    cot = policy.gold_cot(scene)
    assert "go to Condition 1." in cot  # the references that must not start a line
    steps = cot_steps(cot, path)
    assert [s.split(":")[0] for s in steps[1:-1]] == [f"Condition {c}" for c in path]  # one line per visited step
    assert steps[0] == "<think>" and steps[-1] == "</think>\\boxed{" + case + "}"
    assert cot_steps(cot) == steps  # the same without the path's ids
    html_lines = walk_html(policy, scene).split("<br>")
    assert len(html_lines) == len(path) + 2 and all("go to Condition" not in l.split(":")[0] for l in html_lines)


def test_tree_svg_is_labelled():
    policy, scene = sample_policy(depth=2, rng=1), sample_scene(3)
    case, path = policy.evaluate(scene)
    svg = tree_svg(policy, path, case, width=520, height=220)
    texts = re.findall(r"<text[^>]*>([^<]*)</text>", svg)
    for cid, c in policy.conditions.items():  # room for every question at depth 2
        assert f"{cid}: {policy.subject_text(c.subject)}?" in texts
    assert texts.count("yes") == texts.count("no") == len(policy.conditions)
    assert sorted(t for t in texts if t.startswith("Case")) == sorted(policy.cases)
    # a crowded tree keeps what fits: every leaf numbered, no label wider than its room
    big = tree_svg(sample_policy(depth=6, rng=1))
    assert len(re.findall(r"rotate\(-90", big)) == len(sample_policy(depth=6, rng=1).cases)
    assert "<title>" in big and "leaf numbers: cases" in big


def test_excerpt_cuts_between_lines_and_marks_the_cut():
    text = sample_policy(depth=4, rng=0).text()
    short = excerpt(text, 700)
    body, marker = short.rsplit("\n", 1)
    assert len(body) <= 700 and text.startswith(body + "\n")  # whole lines only
    left = len(text.splitlines()) - len(body.splitlines())
    assert marker == f"... ({left} more lines of {len(text.splitlines())})"
    assert excerpt("two\nlines", 700) == "two\nlines"


def test_policy_explorer_builds():
    pytest.importorskip("ipywidgets")
    box = policy_explorer(sample_policy(depth=2, rng=0), sample_scenes(3, seed=1))
    walk = box.children[-1].value
    assert walk.count("<br>Condition ") == walk.count("Condition ") - walk.count("go to Condition ")


@pytest.mark.slow
def test_notebook_01_leaves_nothing_beside_it(tmp_path):
    """Run in a copy: in JupyterLab the working folder is notebooks/, so a relative write lands in the checkout."""
    import nbformat
    from nbclient import NotebookClient

    copy = tmp_path / "01_policies.ipynb"
    shutil.copy(ROOT / "notebooks" / "01_policies.ipynb", copy)
    nb = nbformat.read(copy, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    assert not [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["01_policies.ipynb"]
    printed = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []) if o.get("name") == "stdout")
    assert re.search(r"\n\.\.\. \(\d+ more lines of \d+\)\n", printed)  # the policies are cut between lines
