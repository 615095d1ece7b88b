import filecmp
import json

import pytest

from mpi_kit.data import DataError, load_kit_data, require_columns, with_policy
from mpi_kit.tasks.clevr.data import build_datasets, load_policies, load_scenes

SMALL = dict(num_policies=2, num_scenes=12, depth=2, progress=False)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "a"
    summary = build_datasets(out=str(out), **SMALL)
    return out, summary


def _same_tree(a, b):
    cmp = filecmp.dircmp(a, b)
    assert not cmp.left_only and not cmp.right_only
    _, mismatch, errors = filecmp.cmpfiles(a, b, cmp.common_files, shallow=False)
    assert not mismatch and not errors, mismatch
    for d in cmp.common_dirs:
        _same_tree(a / d, b / d)


def test_deterministic_bytes(built, tmp_path):
    out, _ = built
    build_datasets(out=str(tmp_path / "b"), **SMALL)
    _same_tree(out, tmp_path / "b")


def test_kinds_and_split_by_scene(built):
    out, summary = built
    assert summary["datasets"] == {"qa": {"train": 20, "test": 4}, "cot": {"train": 20, "test": 4},
                                   "vmcpt": {"train": 20}, "rl": {"train": 20},
                                   "eval": {"no_policy": 4, "in_context": 4, "override": 4}}
    qa, cot = load_kit_data(out, "qa"), load_kit_data(out, "cot")
    train_scenes = set(qa["train"]["scene_id"])
    assert train_scenes.isdisjoint(qa["test"]["scene_id"])
    assert train_scenes == {s.scene_id for s in load_scenes(out, "train")}
    row = qa["train"][0]
    assert row["completion"][0]["content"][0]["text"] == "\\boxed{" + row["case"] + "}"
    assert row["prompt"][0]["content"][-1]["text"].startswith(f"According to Policy: {row['policy_name']},")
    assert len(row["images"]) == 1 and row["images"][0].size == (96, 64)
    c = cot["train"][0]["completion"][0]["content"][0]["text"]
    assert c.startswith("<think>Condition 1:") and "</think>\\boxed{Case" in c


def test_rows_agree_with_the_trees(built):
    out, _ = built
    policies = load_policies(out)
    scenes = {s.scene_id: s for s in load_scenes(out)}
    for row in load_kit_data(out, "cot")["test"]:
        case, path = policies[row["policy_name"]].evaluate(scenes[row["scene_id"]])
        assert (row["case"], row["path"]) == (case, path)
    overrides = load_policies(out, overrides=True)
    for row in load_kit_data(out, "eval")["override"]:
        assert row["case"] == overrides[row["policy_name"]].evaluate(scenes[row["scene_id"]])[0]
        assert row["prompt"][0]["content"][0]["text"].startswith("Suppose we have an updated Policy")


def test_vmcpt_and_rl_carry_the_policy(built):
    out, _ = built
    v = load_kit_data(out, "vmcpt")["train"][0]
    text = "".join(p["text"] or "" for p in v["prompt"][0]["content"])
    assert f"Policy: {v['policy_name']}" in text and "# Condition 1\n" in text
    r = load_kit_data(out, "rl")["train"][0]
    assert all("Condition" not in (p["text"] or "") for p in r["prompt"][0]["content"])  # no policy in the prompt
    assert r["policy"][0]["text"].startswith(f"Policy: {r['policy_name']}")
    aware = with_policy(r["prompt"], r["policy"])
    assert aware[0]["content"][-2:] == r["prompt"][0]["content"]


def test_multimodal_data(tmp_path):
    build_datasets(out=str(tmp_path), num_policies=1, num_scenes=4, depth=4, variant="M", kinds=("vmcpt",),
                   progress=False)
    row = load_kit_data(tmp_path, "vmcpt")["train"][0]
    n_image_parts = sum(p["type"] == "image" for p in row["prompt"][0]["content"])
    assert n_image_parts == len(row["images"]) == len(row["policy_images"]) + 1 == 4


@pytest.mark.parametrize("kw,message", [
    (dict(num_policies=0), "num_policies"), (dict(num_scenes=1), "num_scenes"),
    (dict(test_fraction=1.5), "test_fraction"), (dict(kinds=("qa", "dpo")), "unknown dataset kinds"),
    (dict(variant="X"), "variant")])
def test_bad_config(kw, message, tmp_path):
    with pytest.raises(DataError, match=message):
        build_datasets(out=str(tmp_path), progress=False, **kw)
    assert not list(tmp_path.iterdir())  # nothing written


def test_missing_and_wrong_columns(built, tmp_path):
    out, _ = built
    with pytest.raises(DataError, match="no qa dataset"):
        load_kit_data(tmp_path, "qa")
    ds = load_kit_data(out, "qa")["train"].remove_columns(["images"])
    with pytest.raises(DataError, match=r"lacks column\(s\) \['images'\]"):
        require_columns(ds, ["prompt", "images"], "SFT")
    with pytest.raises(DataError, match="empty"):
        require_columns(ds.select([]), ["prompt"], "SFT")


def test_summary(built):
    out, summary = built
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["datasets"] == summary["datasets"] and "out" not in on_disk["config"]
    assert set(on_disk["cases"]) == set(load_policies(out))
