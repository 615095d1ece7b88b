"""Your own policy: a ClevrPolicy tree of your own (`DataConfig.policy_files`), and a policy that is no tree at all
(`mpi-kit custom-data`: a text document and JSONL rows), distilled with no answers needed and scored where answers
exist; every bad input refused with a clear error before anything is written or any model loads."""
import json

import pytest

from mpi_kit.cli import main
from mpi_kit.data import DataError, load_kit_data, message_text
from mpi_kit.tasks.clevr.data import DataConfig, build_datasets
from mpi_kit.tasks.clevr.policy import PolicyError, sample_policy
from mpi_kit.tasks.clevr.scenes import sample_scenes, scene_image
from mpi_kit.tasks.custom.data import CustomDataConfig, build_custom_datasets
from mpi_kit.tasks.custom.task import read_answer, same_answer


def test_a_tree_of_your_own_becomes_the_datasets_policy(tmp_path):
    mine = sample_policy(2, 7)
    mine.name = "My-Policy"
    f = tmp_path / "mine.json"
    mine.to_json(f)
    cfg = DataConfig(out=str(tmp_path / "d"), num_scenes=20, policy_files=(str(f),), kinds=("rl", "eval"))
    s = build_datasets(cfg, progress=False)
    assert s["policies"] == ["My-Policy"] and (tmp_path / "d" / "policies" / "My-Policy.json").exists()
    rl = load_kit_data(tmp_path / "d", "rl")["train"]
    assert set(rl["policy_name"]) == {"My-Policy"} and all(r["case"] == mine.evaluate(
        next(x for x in sample_scenes(20, 0) if x.scene_id == r["scene_id"]))[0] for r in rl)
    assert build_datasets(cfg, progress=False).get("reused")  # the same policy: nothing to redo
    data = json.loads(f.read_text())
    data["cases"] = list(reversed(data["cases"]))  # an edited policy is a new build, under the same file name
    f.write_text(json.dumps(data))
    assert not build_datasets(cfg, progress=False).get("reused")


def test_bad_tree_files_are_refused_before_a_build(tmp_path, capsys):
    f = tmp_path / "p.json"
    f.write_text('{"name": "X", "conditions": []}')
    with pytest.raises(PolicyError, match="missing 'cases'"):
        build_datasets(DataConfig(out=str(tmp_path / "d"), num_scenes=10, policy_files=(str(f),)), progress=False)
    assert not (tmp_path / "d" / "summary.json").exists()
    p = sample_policy(2, 1)
    p.to_json(tmp_path / "a.json")
    p.to_json(tmp_path / "b.json")
    with pytest.raises(DataError, match="two policies with one name"):
        DataConfig(policy_files=(str(tmp_path / "a.json"), str(tmp_path / "b.json"))).check()
    assert main(["data", "--out", str(tmp_path / "e"), "--num-scenes", "10", "--policy-files", str(f)]) == 2
    assert "missing 'cases'" in capsys.readouterr().err


def _clevr_as_text(tmp_path, n=16, answered=12):
    """A ClevrPolicy written out as plain text, and rows of its scenes: the first `answered` with their case."""
    policy = sample_policy(2, 3)
    (tmp_path / "policy.txt").write_text(policy.text())
    (tmp_path / "img").mkdir()
    lines = []
    for i, scene in enumerate(sample_scenes(n, 5)):
        scene_image(scene, (96, 64)).save(tmp_path / "img" / f"{i}.png")
        row = {"image": f"img/{i}.png", "query": f"According to Policy: {policy.name}, what should be the "
                                                 f"response for the given image?"}
        if i < answered:
            row["answer"] = policy.evaluate(scene)[0]
        lines.append(json.dumps(row))
    (tmp_path / "rows.jsonl").write_text("\n".join(lines) + "\n")
    return policy


def test_custom_data_holds_your_rows_and_policy(tmp_path):
    policy = _clevr_as_text(tmp_path)
    cfg = CustomDataConfig(out=str(tmp_path / "d"), rows=str(tmp_path / "rows.jsonl"),
                           policy=str(tmp_path / "policy.txt"), test_fraction=0.25)
    s = build_custom_datasets(cfg)
    assert s["rows"] == {"total": 16, "answered": 12, "train": 13, "test": 3}
    rl, ev = load_kit_data(tmp_path / "d", "rl")["train"], load_kit_data(tmp_path / "d", "eval")
    assert len(rl) == 13 and sum(c == "" for c in rl["case"]) == 4  # rows without answers are distilled on too
    assert all(policy.text() in "".join(p["text"] or "" for p in r["policy"]) for r in rl)
    assert not any(policy.text() in message_text(r["prompt"]) for r in rl)  # the student never reads it
    assert all(policy.text() in message_text(r["prompt"]) for r in ev["in_context"])
    assert len(ev["no_policy"]) == 3 and all(c.startswith("Case") for c in ev["no_policy"]["case"])
    assert build_custom_datasets(cfg)["reused"]
    scene_image(sample_scenes(1, 99)[0], (96, 64)).save(tmp_path / "img" / "0.png")  # an image edited in place
    assert not build_custom_datasets(cfg).get("reused")
    from mpi_kit.tasks import task_of

    assert task_of(tmp_path / "d").name == "custom"


@pytest.mark.parametrize("rows, message", [
    ('{"image": "img/0.png"}', "line 1 has no query"),
    ('{"image": "img/nope.png", "query": "q"}', "no image at"),
    ('{"query": "q"}', "line 1 has no image"),
    ('{"image": "img/0.png", "query": "q", "answer": 3}', "must be non-empty text"),
    ('not json', "line 1 is not JSON"),
    ('', "holds no rows"),
])
def test_bad_custom_rows_are_named_before_anything_is_written(tmp_path, capsys, rows, message):
    _clevr_as_text(tmp_path, n=2, answered=2)
    (tmp_path / "bad.jsonl").write_text(rows + "\n")
    args = ["custom-data", "--rows", str(tmp_path / "bad.jsonl"), "--policy", str(tmp_path / "policy.txt"),
            "--out", str(tmp_path / "d")]
    assert main(args) == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "d").exists() or not any((tmp_path / "d").iterdir())


def test_an_empty_or_missing_policy_is_refused(tmp_path, capsys):
    _clevr_as_text(tmp_path, n=2, answered=2)
    (tmp_path / "empty.txt").write_text("  \n")
    base = ["custom-data", "--rows", str(tmp_path / "rows.jsonl"), "--out", str(tmp_path / "d")]
    assert main(base + ["--policy", str(tmp_path / "empty.txt")]) == 2
    assert "is empty" in capsys.readouterr().err
    assert main(base + ["--policy", str(tmp_path / "nope.txt")]) == 2
    assert "no policy file" in capsys.readouterr().err


def test_answers_are_read_from_the_box_or_the_last_line():
    assert read_answer("<think>because</think>\\boxed{Case 2}") == "Case 2"
    assert read_answer("<think>x</think>\nthe answer\nCase 3 ") == "Case 3"
    assert read_answer("   ") is None
    assert same_answer(" case  2", "Case 2") and not same_answer("Case 21", "Case 2") and not same_answer(None, "x")


def test_distill_your_policy_and_evaluate_it(tmp_path, capsys):
    """The whole path on tiny: custom data from a ClevrPolicy written as text, two distillation steps (no answers
    needed), then `mpi-kit evaluate` with no policy in the prompt."""
    from mpi_kit.distill import run_distill

    _clevr_as_text(tmp_path)
    assert main(["custom-data", "--rows", str(tmp_path / "rows.jsonl"), "--policy", str(tmp_path / "policy.txt"),
                 "--out", str(tmp_path / "d")]) == 0
    s = run_distill("tiny", tmp_path / "d", tmp_path / "distill", max_steps=2,
                    **{"distill.per_device_train_batch_size": 2, "distill.max_completion_length": 16})
    assert s["steps"] == 2
    capsys.readouterr()
    assert main(["evaluate", "--data", str(tmp_path / "d"), "--model", str(tmp_path / "distill"),
                 "--max-new-tokens", "16", "--out", str(tmp_path / "ev.json")]) == 0
    said = capsys.readouterr().out
    assert "% right (95% interval" in said and "n = 2)" in said  # 12 answered rows, a fifth held out
    assert len(json.loads((tmp_path / "ev.json").read_text())["rows"]) == 2


def test_custom_data_never_removes_a_file_it_did_not_write(tmp_path, capsys):
    """A user's file in --out: the first build refuses the folder; beside a finished build, a rebuild (an edited
    policy) replaces only the files its manifest lists, and the user's file is left as it was."""
    _clevr_as_text(tmp_path, n=4, answered=4)
    out = tmp_path / "d"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    args = ["custom-data", "--rows", str(tmp_path / "rows.jsonl"), "--policy", str(tmp_path / "policy.txt"),
            "--out", str(out)]
    assert main(args) == 2 and "notes.txt" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "mine" and not (out / "summary.json").exists()
    (out / "notes.txt").unlink()
    assert main(args) == 0
    (out / "notes.txt").write_text("mine")
    (tmp_path / "policy.txt").write_text("an edited policy")
    assert main(args) == 0 and "an edited policy" in (out / "policy.txt").read_text()
    assert (out / "notes.txt").read_text() == "mine"
