"""The rollout inspector on the shipped recorded run (no model, no GPU): tables, filters, the widget, the reward
playground, figures, the `inspect` CLI; and `mpi-kit rl` under a 2-process `accelerate launch`, and an RL run
stopped after k steps then rerun into its folder ending equal to an uninterrupted one."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import hashed_reward, interrupted_then_resumed
from mpi_kit.cli import main
from mpi_kit.inspector import (ASSET_RUN, CHECKOUT, RolloutInspector, advantage_note, completion_card, filter_groups,
                               filter_rows, find_data_dir, group_html, group_table, load_rollouts, pack_run,
                               policy_rescues, rescore, rollout_figures, step_stats)
from mpi_kit.tasks.clevr.rewards import total_reward
from mpi_kit.rl import NO_POLICY, POLICY_AWARE, rl_trainer
from mpi_kit.training import train_stage

ROOT = Path(__file__).resolve().parent.parent
FAST = {"grpo.max_completion_length": 8, "grpo.per_device_train_batch_size": 4, "grpo.num_generations": 2}


@pytest.fixture(scope="module")
def df():
    return load_rollouts(ASSET_RUN)


# ------------------------------------------------------------------------------------------ the recorded run

def test_the_recorded_run_shows_policy_rollout_at_work(df):
    """Re-recorded on the new base model (N = 4, a short SFT): PoRo rescues groups, and the policy-aware half earns
    more reward than the no-policy half, step after step (what notebook 06 asks a reader to look at)."""
    assert len(policy_rescues(df)) >= 4
    stats = step_stats(df)
    assert (stats["reward_policy_aware"] >= stats["reward_no_policy"]).mean() >= 0.75


def test_the_rescued_filter_finds_the_groups_policy_rollout_rescued(df):
    rescued = filter_groups(df, rescued=True)
    assert sorted(rescued["group"]) == sorted(policy_rescues(df)["group"]) and len(rescued) > 0
    ins = RolloutInspector(ASSET_RUN)
    ins.rescued.value = True
    assert f"{len(rescued)} of" in ins.count.value
    shown = df[df["group"].isin(ins.visible["group"])]
    assert not (shown["correct"] & (shown["source"] == NO_POLICY)).any()


def test_shipped_run_is_small_and_complete(df):
    size = sum(f.stat().st_size for f in ASSET_RUN.rglob("*") if f.is_file())
    assert size < 600_000, f"assets/rollouts is {size} bytes"
    assert not list(ASSET_RUN.rglob("*.safetensors"))
    s = json.loads((ASSET_RUN / "summary.json").read_text())
    assert s["policy_rollout"] and df["step"].nunique() == s["steps"] >= 3
    assert find_data_dir(ASSET_RUN) == ASSET_RUN / "data"
    assert set(df["source"]) == {NO_POLICY, POLICY_AWARE}
    sizes = df.groupby("group").size()
    assert (sizes == s["group_size"]).all()  # every group holds 2G completions, G of each source
    assert (df.groupby("group")["source"].apply(lambda x: (x == POLICY_AWARE).sum()) == s["G"]).all()


def test_tables_agree_with_the_log(df):
    # the weighted reward is the trainer's; the advantages are (r - mean) / (std + 1e-4) within each group
    row = df.iloc[0]
    assert row["reward"] == pytest.approx(total_reward(row["text"], row["gold"]))
    for _, g in df.groupby("group"):
        r = g["reward"]
        assert g["advantage"].to_numpy() == pytest.approx(((r - r.mean()) / (r.std() + 1e-4)).to_numpy(), abs=1e-4)
    groups = group_table(df)
    assert len(groups) == df["group"].nunique()
    stats = step_stats(df)
    assert list(stats["step"]) == sorted(df["step"].unique())
    assert stats["frac_zero_std"].between(0, 1).all()
    rescued = policy_rescues(df)
    assert (rescued["acc_no_policy"] == 0).all() and (rescued["acc_policy_aware"] > 0).all()


def test_filters(df):
    assert set(filter_rows(df, source=POLICY_AWARE)["source"]) == {POLICY_AWARE}
    assert filter_rows(df, truncated=True)["truncated"].all()
    assert not filter_rows(df, wrong=True)["correct"].any()
    zero = filter_groups(df, zero_std=True)
    assert zero["zero_std"].all() and len(zero) == group_table(df)["zero_std"].sum()


def test_widget_filters_playground_and_step_slider(df):
    ins = RolloutInspector(ASSET_RUN)
    assert "<img" in ins.scene.value and ins.cards.value.count("border:2px") == len(ins.current_group())
    n_all = len(ins.visible)
    ins.zero_std.value = True
    assert len(ins.visible) == group_table(df)["zero_std"].sum() < n_all
    ins.zero_std.value = False
    ins.wrong.value = True
    assert len(ins.visible) == len(filter_groups(df, wrong=True))
    ins.wrong.value = False
    # the step slider moves the same prompt through the steps
    prompt = df.groupby("prompt_id")["step"].nunique().idxmax()
    ins.prompt.value = prompt
    steps = list(ins.step.options)
    assert steps == sorted(df[df["prompt_id"] == prompt]["step"].unique())
    ins.step.value = steps[-1]
    assert set(ins.current_group()["step"]) == {steps[-1]}
    ins.drift.value = True
    # playground: a perfect answer re-scores to the full reward, and its advantage follows
    gold = ins.gold.value
    ins.edit.value = "<think>I follow the policy.</think> \\boxed{" + gold + "}"
    assert ins.last_score["reward"] == pytest.approx(1.0) and ins.last_score["parsed_answer"] == gold
    ins.edit.value = "no answer"
    assert ins.last_score["reward"] == 0.0 and "reward <b>0.00</b>" in ins.score.value


def test_filters_matching_no_group_clear_the_playground(df):
    ins = RolloutInspector(df.assign(truncated=False))
    assert ins.edit.value and ins.gold.value and ins.score.value
    ins.truncated.value = True  # no completion is truncated: no group matches
    assert ins.visible.empty and "0 of" in ins.count.value
    assert ins.edit.value == "" and ins.gold.value == "" and ins.last_score is None
    assert "no group matches" in ins.score.value.lower() and "no group matches" in ins.cards.value.lower()
    assert ins.scene.value == "" and not ins.pick.options
    ins.truncated.value = False  # and back
    assert ins.edit.value and "advantage in this group" in ins.score.value


def test_a_missing_answer_reads_no_answer(df):
    row = df.iloc[0].copy()  # a completion with no \boxed{...} (the recorded run may have none): parsed as NaN
    row["text"], row["parsed_answer"], row["correct"] = "<think>Condition 1: ...", float("nan"), False
    card = completion_card(row)
    assert "answer <b>no answer</b>" in card and ">nan<" not in card and ">None<" not in card
    ins = RolloutInspector(ASSET_RUN)
    ins.edit.value = "<think>I could not decide.</think>"
    assert "parsed <b>no answer</b>" in ins.score.value and "None" not in ins.score.value


def test_a_wrong_answer_with_a_positive_advantage_is_explained(df):
    # a recorded group whose no-policy half is all wrong, its policy-aware half made malformed (reward 0): the wrong
    # but well-formed no-policy answers are then above the group's mean, so their advantages are positive
    wrong = df.groupby("group").filter(lambda g: not g[g["source"] == NO_POLICY]["correct"].any())
    group = wrong[wrong["group"] == wrong["group"].iloc[0]].copy()
    aware_rows = group["source"] == POLICY_AWARE
    group.loc[aware_rows, ["reward", "format_reward", "accuracy_reward"]] = 0.0
    group.loc[aware_rows, "correct"] = False
    r = group["reward"]
    group["advantage"] = (r - r.mean()) / (r.std() + 1e-4)
    assert (group[group["source"] == NO_POLICY]["advantage"] > 0).all()
    note = advantage_note(group)
    mean = group["reward"].mean()
    assert "relative to the group's mean reward" in note and f"({mean:.2f}, both halves pooled)" in note
    aware = group[group["source"] == POLICY_AWARE]
    assert f"policy-aware half averaged {aware['reward'].mean():.2f}" in note
    shown = group_html(group)
    assert shown.count("(why? see the note)") == len(group[~group["correct"] & (group["advantage"] > 0)])
    assert "relative to the group" in shown
    calm = df.groupby("group").filter(lambda g: not (~g["correct"] & (g["advantage"] > 0)).any())
    assert advantage_note(calm[calm["group"] == calm["group"].iloc[0]]) == ""


def _strings(x):
    if isinstance(x, dict):
        return [s for v in x.values() for s in _strings(v)]
    if isinstance(x, list):
        return [s for v in x for s in _strings(v)]
    return [x] if isinstance(x, str) else []


def test_the_recorded_run_stores_no_absolute_path(tmp_path):
    for f in ASSET_RUN.rglob("*.json"):
        absolute = [s for s in _strings(json.loads(f.read_text())) if Path(s).is_absolute()]
        assert not absolute, f"{f}: {absolute}"
    # pack_run (what record_demo_run ends with) never writes one, whatever the run's summary holds
    packed = pack_run(ASSET_RUN, tmp_path / "p", extra={"recorded_with": {
        "model": str(CHECKOUT / "assets" / "tiny-vlm"), "init": str(tmp_path.parent / "elsewhere" / "sft_cot")}})
    s = json.loads((packed / "summary.json").read_text())
    assert s["recorded_with"] == {"model": "assets/tiny-vlm", "init": "sft_cot"}
    strings = [x for f in packed.rglob("*.json") for x in _strings(json.loads(f.read_text()))]
    assert not [x for x in strings if Path(x).is_absolute()]


def test_rescore_advantage():
    r = rescore("<think>x</think>\\boxed{Case 1}", "Case 1", [0.0, 0.0, 0.0, 0.0], 0)
    assert r["reward"] == pytest.approx(1.0) and r["advantage"] == pytest.approx(0.75 / (0.5 + 1e-4))


def test_figures(df):
    figs = rollout_figures(df)
    assert len(figs) == 4 and all(len(f.data) >= 1 for f in figs)
    assert figs[-1].data[0].name == "reward, no-policy"


def test_inspect_cli(capsys, tmp_path):
    assert main(["inspect", str(ASSET_RUN)]) == 0
    out = capsys.readouterr().out
    assert "frac_zero_std" in out and len(out.strip().splitlines()) == 1 + load_rollouts(ASSET_RUN)["step"].nunique()
    assert main(["inspect", str(tmp_path)]) == 2


def test_pack_run_roundtrip(df, tmp_path):
    packed = pack_run(ASSET_RUN, tmp_path / "p")
    again = load_rollouts(packed)
    pd.testing.assert_frame_equal(again.drop(columns=["text"]), df.drop(columns=["text"]))
    assert find_data_dir(packed) == packed / "data"


# ------------------------------------------------------------------------------------------ training runs

def test_cli_rl_under_accelerate_with_two_processes(small_rl_setup, tmp_path):
    """`--multi_gpu --num_processes 2` on a CPU-only machine: torchrun + gloo DDP, two real processes
    (`--cpu --num_processes 2` starts only one; accelerate's multi-CPU path needs mpirun)."""
    root, base = small_rl_setup
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "mpi_kit", "rl",
           "--recipe", base, "--data", str(root / "data"), "--out", str(out), "--algo", "grpo", "--policy-rollout",
           "--max-steps", "2", "--num-generations", "2", "--set", "grpo.max_completion_length=8",
           "grpo.per_device_train_batch_size=4"]
    r = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.loads((out / "summary.json").read_text())
    assert s["world_size"] == 2 and s["steps"] == 2 and s["stage"] == "poro_grpo" and s["group_size"] == 4
    assert r.stdout.count('"stage"') == 1
    logged = load_rollouts(out)
    # 2 processes x 4 completions per step = 2 pooled groups of 2G = 4, each half G = 2, every step
    assert logged.groupby("step")["group"].nunique().tolist() == [2, 2]
    assert all(list(x) == [NO_POLICY] * 2 + [POLICY_AWARE] * 2 for _, x in logged.groupby("group")["source"])


def test_rl_interrupted_then_resumed_equals_uninterrupted(small_rl_setup, tmp_path):
    root, base = small_rl_setup

    def run(out, **kw):
        t, processor, info = rl_trainer("tiny", root / "data", out, "grpo", True, model=base, max_steps=4,
                                        save_steps=10, **FAST, **kw)
        t.reward_funcs, t.reward_func_names, t.reward_processing_classes = [hashed_reward], ["hashed"], [None]
        t.reward_weights = torch.ones(1)
        return train_stage(t, "poro_grpo", out, processor, info)

    full, resumed = interrupted_then_resumed(run, tmp_path)
    assert any(p["loss"] != 0 for p in full["loss"])
    a, b = load_rollouts(tmp_path / "full"), load_rollouts(tmp_path / "resumed")
    assert a["text"].tolist() == b["text"].tolist()  # same rollouts, steps 3-4 included: the RNG came back
    from safetensors.torch import load_file
    wa, wb = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("full", "resumed"))
    assert wa.keys() == wb.keys() and all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)


def _gta_log(run_dir):
    """A hand-written GTAPolicy rollout log, as TRL writes it: one PoRo group of 4 at one step, columns named after
    the GTA reward functions. Three completions call the right tool with the right arguments, one does not."""
    from mpi_kit.tasks.gta.rewards import gta_format_reward, gta_reward

    gold = json.dumps({"name": "OCR_v2", "arguments": {"image": "image/1.png"}})
    texts = ['<think>Rule A.1 applies.</think>{"name": "OCR_v2", "arguments": {"image": "image/1.png"}}'] * 3 + [
        '<think>no rule</think>{"name": "Calculator", "arguments": {"expression": "1+1"}}']
    comp = [[{"role": "assistant", "content": t}] for t in texts]
    fmt, acc = gta_format_reward(texts), gta_reward(texts, answer=[gold] * 4)
    (run_dir / "completions").mkdir(parents=True)
    pd.DataFrame({"step": [1] * 4, "prompt": [[{"role": "user", "content": "read it"}]] * 4, "completion": comp,
                  "gta_format_reward": fmt, "gta_reward": acc, "advantage": [0.5, 0.5, 0.5, -1.5],
                  "source": ["no-policy", "no-policy", "policy-aware", "policy-aware"], "prompt_id": ["p0"] * 4,
                  "gold": [gold] * 4, "attempt": [0] * 4}).to_parquet(
        run_dir / "completions" / "completions_00001.parquet")
    return fmt, acc, gold


def test_the_inspector_scores_a_gta_log_as_the_gta_reward_does(tmp_path):
    """The rewards, answers and correctness of a GTA run are GTAPolicy's (the task is read off the log's reward
    columns here, off summary.json's "task" for a real run), not ClevrPolicy's boxed case (which scored 0)."""
    from mpi_kit.inspector import RolloutInspector

    fmt, acc, gold = _gta_log(tmp_path)
    assert fmt == [1.0] * 4 and acc[:3] == [1.0] * 3 and acc[3] == 0.0
    df = load_rollouts(tmp_path)
    assert set(df["task"]) == {"gta"}
    assert df["reward"].tolist() == pytest.approx([0.1 * f + 0.9 * a for f, a in zip(fmt, acc)])
    assert df["correct"].tolist() == [True, True, True, False]
    assert df["parsed_answer"].tolist() == ["OCR_v2"] * 3 + ["Calculator"]
    g = group_table(df).iloc[0]
    assert g["reward_mean"] == pytest.approx(0.775) and not g["zero_std"] and g["acc_policy_aware"] == 0.5
    r = rescore(df["text"][3], gold, df["reward"].tolist(), 3, task="gta")  # fixing the wrong call
    assert r["reward"] == pytest.approx(0.1) and r["parsed_answer"] == "Calculator"
    r = rescore(df["text"][0], gold, df["reward"].tolist(), 3, task="gta")
    assert r["reward"] == pytest.approx(1.0) and r["advantage"] == pytest.approx(0.0, abs=1e-3)
    w = RolloutInspector(df)
    w.pick.value = w.pick.options[-1][1]
    w.edit.value = df["text"][0]
    assert w.last_score["reward"] == pytest.approx(1.0)


def test_the_arithmetic_table_and_poro_controls_follow_the_run(df):
    """The selected group's arithmetic is shown (the no-policy half first, recomputed advantages equal to the
    logged ones); a GRPO run, with no policy-aware half, gets no PolicyRollout controls."""
    ins = RolloutInspector(ASSET_RUN)
    assert "Advantage arithmetic" in ins.arith.value and "pooled 2G group" in ins.arith.value
    from mpi_kit.rollout_log import group_arithmetic

    rows = group_arithmetic(ins.current_group())["rows"]
    assert rows["source"].tolist()[0] == NO_POLICY
    assert rows["advantage"].tolist() == pytest.approx(rows["logged"].tolist(), abs=1e-3)
    filters = ins.children[1].children
    assert ins.rescued in filters and ins.source in filters
    grpo = RolloutInspector(df[df["source"] == NO_POLICY].assign(source=NO_POLICY))
    assert not grpo.policy_rollout
    assert grpo.rescued not in grpo.children[1].children and grpo.source not in grpo.children[1].children
    assert "one group (GRPO)" in grpo.arith.value


def test_the_playground_says_why_a_differently_cased_gold_scores_zero():
    ins = RolloutInspector(ASSET_RUN)
    gold = ins.gold.value
    ins.edit.value = "<think>x</think> \\boxed{" + gold + "}"
    ins.gold.value = gold.lower()
    assert ins.last_score["accuracy_reward"] == 0 and "compared exactly" in ins.score.value
    ins.gold.value = gold
    assert ins.last_score["accuracy_reward"] == 1 and "compared exactly" not in ins.score.value
