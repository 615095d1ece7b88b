"""The paper's data regime: a seeded CoT share of the training pairs, forward CoTs filtered by their answer (on a
stub generator with known answers), and gold mode at share 1 giving today's rows."""
import json
import re

import pytest
from PIL import Image

from mpi_kit.tasks.clevr.data import PAPER_REGIME, DataConfig, build_datasets, load_policies, load_scenes
from mpi_kit.data import DataError, load_kit_data
from mpi_kit.tasks.clevr.forward_cot import cot_budget, forward_cots
from mpi_kit.rewards import completion_text

from test_data import _same_tree

SMALL = dict(num_policies=2, num_scenes=20, depth=2, seed=3, progress=False)  # 16 training scenes per policy


def _text(messages) -> str:
    return "".join(p["text"] or "" for m in messages for p in m["content"])


class Stub:
    """A generator with known answers: right on scenes whose number is even, no answer on multiples of 3 (among
    the odd ones), a wrong case otherwise. Records what it was asked."""

    def __init__(self):
        self.calls = []

    @staticmethod
    def reply(row) -> str:
        n = int(re.sub(r"\D", "", row["scene_id"]))
        if n % 2 == 0:
            return f"<think>stub {row['id']}</think>\\boxed{{{row['case']}}}"
        if n % 3 == 0:
            return "<think>ran out of tokens"
        wrong = "Case 1" if row["case"] != "Case 1" else "Case 2"
        return f"<think>stub</think>\\boxed{{{wrong}}}"

    def __call__(self, rows, max_new_tokens):
        self.calls.append((rows, max_new_tokens))
        return [self.reply(r) for r in rows]


@pytest.fixture(scope="module")
def forward(tmp_path_factory):
    stub = Stub()
    out = tmp_path_factory.mktemp("regime") / "forward"
    summary = build_datasets(DataConfig(out=str(out), **{k: v for k, v in SMALL.items() if k != "progress"},
                                        cot_share=0.25, cot_source="forward", cot_model="stub"),
                             progress=False, generate=stub)
    return out, summary, stub


def test_forward_cot_keeps_only_right_answers(forward):
    out, summary, stub = forward
    asked = [r for rows, _ in stub.calls for r in rows]
    right = [r for r in asked if Stub.reply(r).endswith(f"{{{r['case']}}}")]
    answered = [r for r in asked if "\\boxed" in Stub.reply(r)]
    assert 0 < len(right) < len(answered) < len(asked) == 2 * 4  # round(0.25 x 16) pairs per policy
    assert summary["cot"] == {"share": 0.25, "source": "forward", "asked": 8, "generated": 8,
                              "answered": len(answered), "kept": len(right), "model": "stub",
                              "max_new_tokens": cot_budget(2), "seconds": summary["cot"]["seconds"]}
    on_disk = json.loads((out / "summary.json").read_text())
    assert "seconds" not in on_disk["cot"] and on_disk["cot"]["kept"] == len(right)
    cot, vmcpt = load_kit_data(out, "cot")["train"], load_kit_data(out, "vmcpt")["train"]
    assert cot["id"] == vmcpt["id"] == [r["id"] for r in right]
    for row in (*cot, *vmcpt):
        assert completion_text(row["completion"]) == Stub.reply(row)  # the generator's own words, not gold
    assert "# Condition 1" not in _text(cot[0]["prompt"]) and "# Condition 1" in _text(vmcpt[0]["prompt"])


def test_generator_sees_the_policy_in_context(forward):
    _, _, stub = forward
    assert all(n == cot_budget(2) == 72 for _, n in stub.calls) and all(len(rows) <= 8 for rows, _ in stub.calls)
    row = stub.calls[0][0][0]
    assert f"Policy: {row['policy_name']}" in _text(row["prompt"]) and "# Condition 1" in _text(row["prompt"])
    assert all(isinstance(im, Image.Image) for im in row["images"])  # decoded, as evaluation reads them


def test_qa_rl_and_eval_keep_every_pair(forward):
    out, summary, _ = forward
    assert summary["datasets"]["qa"] == {"train": 32, "test": 8} and summary["datasets"]["rl"] == {"train": 32}
    assert summary["datasets"]["cot"]["test"] == 8 and summary["datasets"]["eval"]["in_context"] == 8
    policies, scenes = load_policies(out), {s.scene_id: s for s in load_scenes(out)}
    for row in load_kit_data(out, "cot")["test"]:  # held-out references stay gold
        assert completion_text(row["completion"]) == policies[row["policy_name"]].gold_cot(scenes[row["scene_id"]])


def test_forward_cot_counts():
    rows = [{"case": "Case 1", "prompt": [], "images": []}] * 5
    answers = iter(["\\boxed{Case 1}", "\\boxed{Case 2}", "nothing", " <think>x</think>\\boxed{Case 1} ", "\\boxed{}"])
    kept, counts = forward_cots(rows, lambda rs, n: [next(answers) for _ in rs], 10, batch_size=2, progress=False)
    assert kept == ["\\boxed{Case 1}", None, None, "<think>x</think>\\boxed{Case 1}", None]
    assert counts == {"asked": 5, "generated": 5, "answered": 4, "kept": 2}
    with pytest.raises(ValueError, match="returned 0 completions for 2 rows"):
        forward_cots(rows[:2], lambda rs, n: [], 10, progress=False)


def test_cot_share_is_a_seeded_choice(tmp_path):
    a = build_datasets(out=str(tmp_path / "a"), cot_share=0.25, **SMALL)
    build_datasets(out=str(tmp_path / "b"), cot_share=0.25, **SMALL)
    _same_tree(tmp_path / "a", tmp_path / "b")  # same seed, same bytes
    assert a["cot"] == {"share": 0.25, "source": "gold", "asked": 8, "generated": 8, "kept": 8}
    assert a["datasets"]["cot"] == {"train": 8, "test": 8} and a["datasets"]["vmcpt"] == {"train": 8}
    assert a["datasets"]["qa"]["train"] == a["datasets"]["rl"]["train"] == 32
    cot = load_kit_data(tmp_path / "a", "cot")["train"]
    assert cot["id"] == load_kit_data(tmp_path / "a", "vmcpt")["train"]["id"]
    assert set(cot["id"]) < set(load_kit_data(tmp_path / "a", "qa")["train"]["id"])
    assert [cot["policy_name"].count(p) for p in a["policies"]] == [4, 4]  # the same share of every policy
    other = build_datasets(out=str(tmp_path / "c"), cot_share=0.25, **{**SMALL, "seed": 4})
    assert load_kit_data(tmp_path / "c", "cot")["train"]["scene_id"] != cot["scene_id"] and other["cot"]["kept"] == 8


def test_gold_at_share_one_is_todays_data(tmp_path):
    build_datasets(out=str(tmp_path / "default"), **SMALL)
    s = build_datasets(out=str(tmp_path / "gold"), cot_share=1.0, cot_source="gold", **SMALL)
    for kind in ("qa", "cot", "vmcpt", "rl", "eval"):
        _same_tree(tmp_path / "default" / kind, tmp_path / "gold" / kind)
    assert s["cot"] == {"share": 1.0, "source": "gold", "asked": 32, "generated": 32, "kept": 32}
    qa, cot = load_kit_data(tmp_path / "gold", "qa")["train"], load_kit_data(tmp_path / "gold", "cot")["train"]
    assert cot["id"] == qa["id"] == load_kit_data(tmp_path / "gold", "vmcpt")["train"]["id"]
    policies, scenes = load_policies(tmp_path / "gold"), {x.scene_id: x for x in load_scenes(tmp_path / "gold")}
    for row in cot:
        assert completion_text(row["completion"]) == policies[row["policy_name"]].gold_cot(scenes[row["scene_id"]])


def test_no_cot_kinds_no_generation(tmp_path):
    def refuse(rows, n):
        raise AssertionError("a build without cot or vmcpt asked for forward CoTs")

    s = build_datasets(DataConfig(out=str(tmp_path), kinds=("qa", "rl"), cot_source="forward", cot_share=0.125,
                                  num_policies=1, num_scenes=6, depth=2), progress=False, generate=refuse)
    assert s["cot"] == {"share": 0.125, "source": "forward", "asked": 0, "generated": 0, "kept": 0}


def test_paper_regime_and_bad_values(tmp_path):
    cfg = DataConfig(**PAPER_REGIME)
    cfg.check()
    assert (cfg.cot_share, cfg.cot_source) == (0.125, "forward")
    assert (DataConfig().cot_share, DataConfig().cot_source) == (1.0, "gold")  # opt-in: callers keep today's data
    for kw, message in ((dict(cot_share=0), "cot_share"), (dict(cot_share=1.5), "cot_share"),
                        (dict(cot_source="reverse"), "cot_source")):
        with pytest.raises(DataError, match=message):
            build_datasets(out=str(tmp_path), progress=False, **kw)
    assert not list(tmp_path.iterdir())
