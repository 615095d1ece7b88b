"""The rollout log of an RL run as pandas tables, one group at a time: no torch, no widgets.

GRPO learns only from differences *inside* a group (one prompt, its G or 2G completions): a batch mean hides
all-equal groups (zero advantage, no gradient), truncated completions, and whether PolicyRollout's policy-aware
half is where the reward comes from. `load_rollouts` reads TRL's per-step `completions/completions_*.parquet`
(with PolicyRollout's columns) and scores it as the run's task does (`mpi_kit.tasks`: ClevrPolicy's boxed case or
GTAPolicy's tool call); `group_table`, `step_stats`, `filter_groups` and `policy_rescues` are what the inspector
widget (`mpi_kit.inspector`), the pipeline's rollout statistics and `mpi-kit inspect` show.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from .rewards import completion_text

NO_POLICY, POLICY_AWARE = "no-policy", "policy-aware"  # the two halves of a PolicyRollout group
REWARD_COLUMNS = ("format_reward", "accuracy_reward")  # each task's (format, accuracy) rewards, under these names
NO_ANSWER = "no answer"


def answer_text(value, missing: str = NO_ANSWER) -> str:
    """An answer (or gold case) for display: `missing` when there is none. The log stores a completion without a
    `\\boxed{...}` as None, which pandas reads back as NaN; a learner should read "no answer", not `nan`."""
    if value is None or (isinstance(value, float) and value != value) or not str(value).strip():
        return missing
    return str(value)


# ------------------------------------------------------------------------------------------------ loading

def _plain(x):
    """Parquet gives numpy arrays where TRL wrote lists: turn them back, recursively."""
    if hasattr(x, "tolist") and not isinstance(x, (str, bytes)):
        x = x.tolist()
    if isinstance(x, list):
        return [_plain(v) for v in x]
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    return x


def _prompt_text(prompt) -> str:
    prompt = _plain(prompt)
    if isinstance(prompt, str):
        return prompt
    parts = []
    for m in prompt or []:
        content = m.get("content") if isinstance(m, dict) else m
        if isinstance(content, str):
            parts.append(content)
        else:
            parts += ["<image>" if p.get("type") == "image" else (p.get("text") or "") for p in content or []]
    return "".join(parts)


def load_rollouts(run_dir, task=None) -> pd.DataFrame:
    """Every step's rollout log of a run, one row per completion, scored as its task scores it.

    The task is `task` (a name or a `Task`), else the one the run's summary.json names, else the one whose reward
    columns the log carries. Adds `text` (the completion), `prompt_text`, `format_reward` and `accuracy_reward`
    (the task's two rewards under common names), `reward` (the weighted total the trainer used), `correct` (the
    task's answer check against `gold`), `task`, and `group`, the key "step/prompt_id/attempt" of the group a row
    was normalised in. Logs from plain TRL runs (no PolicyRollout columns) load too: every row is then a no-policy
    rollout."""
    from .tasks import get_task, task_of_log

    folder = Path(run_dir) / "completions"
    files = sorted(folder.glob("completions_*.parquet"))
    if not files:
        raise FileNotFoundError(f"no rollout log in {folder}: an RL run writes completions/completions_*.parquet "
                                f"(log_completions=True, as `mpi_kit.rl.rl_trainer` sets)")
    df = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    task = get_task(task or run_summary(run_dir).get("task") or task_of_log(df.columns))
    df["task"] = task.name
    df["text"] = [completion_text(_plain(c)) for c in df["completion"]]
    df["prompt_text"] = [_prompt_text(p) for p in df["prompt"]]
    if "prompt_id" not in df:
        df["prompt_id"] = pd.factorize(df["prompt_text"])[0].astype(str)
    defaults = {"attempt": 0, "source": NO_POLICY, "scene_id": None, "gold": None, "truncated": False}
    for col, value in defaults.items():
        if col not in df:
            df[col] = value
    if "parsed_answer" not in df:
        df["parsed_answer"] = [task.parse(t) for t in df["text"]]
    if "length" not in df:
        df["length"] = df["text"].str.len()
    for role, name in zip(REWARD_COLUMNS, task.reward_names):  # e.g. gta_reward -> accuracy_reward
        if name in df and role != name:
            df[role] = df[name]
    rewards = [c for c in REWARD_COLUMNS if c in df]
    df["reward"] = sum(w * df[c] for w, c in zip(task.reward_weights, REWARD_COLUMNS) if c in df) if rewards else 0.0
    df["correct"] = [task.is_correct(None if pd.isna(a) else a, None if pd.isna(g) else g)  # the logged answers
                     for a, g in zip(df["parsed_answer"], df["gold"])]
    df["group"] = [f"{s}/{p}/{a}" for s, p, a in zip(df["step"], df["prompt_id"], df["attempt"])]
    return df.drop(columns=["prompt"])


def run_summary(run_dir) -> dict:
    from .folders import read_json

    path = Path(run_dir) / "summary.json"
    return read_json(path, "Rerun the stage into that folder to rewrite it.") if path.exists() else {}


def find_data_dir(run_dir, data_dir=None) -> Path | None:
    """Where a run's scenes and policies live: `data_dir` if given, else `run_dir/data` (a packed run), else
    summary.json's "data" (absolute, or relative to the working directory or the run). None if none exists."""
    run_dir = Path(run_dir)
    recorded = run_summary(run_dir).get("data")
    candidates = [data_dir, run_dir / "data"] + ([recorded, run_dir / recorded] if recorded else [])
    for c in candidates:
        if c is not None and (Path(c) / "scenes.jsonl").exists():
            return Path(c)
    return None


# ------------------------------------------------------------------------------------------------ tables

def group_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per group: reward mean/std, zero_std (no learning signal), truncation, and accuracy and reward
    of each half (no-policy / policy-aware), so that PolicyRollout's contribution is visible per group."""
    rows = []
    for key, g in df.groupby("group", sort=False):
        half = {s: g[g["source"] == s] for s in (NO_POLICY, POLICY_AWARE)}
        rows.append({
            "group": key, "step": int(g["step"].iloc[0]), "prompt_id": g["prompt_id"].iloc[0],
            "attempt": int(g["attempt"].iloc[0]), "scene_id": g["scene_id"].iloc[0], "gold": g["gold"].iloc[0],
            "size": len(g), "reward_mean": g["reward"].mean(),
            "reward_std": g["reward"].std(ddof=1) if len(g) > 1 else 0.0,
            "zero_std": bool(g["reward"].nunique() <= 1), "truncated": int(g["truncated"].sum()),
            "correct": int(g["correct"].sum()), "wrong": int((~g["correct"]).sum()),
            "acc_no_policy": half[NO_POLICY]["correct"].mean() if len(half[NO_POLICY]) else float("nan"),
            "acc_policy_aware": half[POLICY_AWARE]["correct"].mean() if len(half[POLICY_AWARE]) else float("nan"),
            "reward_no_policy": half[NO_POLICY]["reward"].mean() if len(half[NO_POLICY]) else float("nan"),
            "reward_policy_aware": half[POLICY_AWARE]["reward"].mean() if len(half[POLICY_AWARE]) else float("nan"),
        })
    return pd.DataFrame(rows)


def filter_rows(df: pd.DataFrame, zero_std: bool = False, truncated: bool = False, source: str = "all",
                wrong: bool = False, rescued: bool = False) -> pd.DataFrame:
    """The completions that pass every filter that is on: in a zero-std group, in a group PolicyRollout rescued
    (no no-policy completion right, a policy-aware one right), truncated, from one source (no-policy /
    policy-aware), or with a wrong (or missing) answer."""
    keep = pd.Series(True, index=df.index)
    if zero_std:
        keep &= df.groupby("group")["reward"].transform("nunique") <= 1
    if rescued:
        keep &= df["group"].isin(set(policy_rescues(df)["group"]))
    if truncated:
        keep &= df["truncated"].astype(bool)
    if source != "all":
        keep &= df["source"] == source
    if wrong:
        keep &= ~df["correct"]
    return df[keep]


def filter_groups(df: pd.DataFrame, table: pd.DataFrame | None = None, **filters) -> pd.DataFrame:
    """`group_table` of the groups with at least one completion passing `filter_rows(df, **filters)` (pass the
    table if you already have it)."""
    table = group_table(df) if table is None else table
    return table[table["group"].isin(set(filter_rows(df, **filters)["group"]))].reset_index(drop=True)


def step_stats(df: pd.DataFrame) -> pd.DataFrame:
    """Per step: reward mean/std, fraction of zero-std groups and of solved ones (every completion right), format
    and accuracy rewards, reward and accuracy of each half, truncation and length; what TRL logs as batch means,
    recomputed from the groups."""
    groups = group_table(df)
    rows = []
    for step, d in df.groupby("step"):
        gs = groups[groups["step"] == step]
        src = {s: d[d["source"] == s] for s in (NO_POLICY, POLICY_AWARE)}
        rows.append({
            "step": int(step), "groups": len(gs), "completions": len(d),
            "reward_mean": d["reward"].mean(), "reward_std": d["reward"].std(ddof=0),
            "frac_zero_std": gs["zero_std"].mean(),
            "frac_solved": (gs["wrong"] == 0).mean(),  # every completion right: zero variance, nothing to learn
            **{c.removesuffix("_reward"): d[c].mean() for c in REWARD_COLUMNS if c in d},
            "reward_no_policy": src[NO_POLICY]["reward"].mean() if len(src[NO_POLICY]) else float("nan"),
            "reward_policy_aware": src[POLICY_AWARE]["reward"].mean() if len(src[POLICY_AWARE]) else float("nan"),
            "acc_no_policy": src[NO_POLICY]["correct"].mean() if len(src[NO_POLICY]) else float("nan"),
            "acc_policy_aware": src[POLICY_AWARE]["correct"].mean() if len(src[POLICY_AWARE]) else float("nan"),
            "frac_truncated": d["truncated"].mean(), "mean_length": d["length"].mean(),
            "rescued_groups": int(((gs["acc_no_policy"] == 0) & (gs["acc_policy_aware"] > 0)).sum()),
        })
        rows[-1]["frac_rescued"] = rows[-1]["rescued_groups"] / max(1, len(gs))
    return pd.DataFrame(rows)


def policy_rescues(df: pd.DataFrame) -> pd.DataFrame:
    """Groups where only the policy-aware half found the right answer: without PolicyRollout these groups would
    have had no accuracy reward at all, and the advantage their correct completions got is the signal PoRo adds."""
    table = group_table(df)
    rescued = table[(table["acc_no_policy"] == 0) & (table["acc_policy_aware"] > 0)]
    best = df[df["correct"] & (df["source"] == POLICY_AWARE)].groupby("group")["advantage"].max()
    out = rescued.assign(advantage_of_correct=rescued["group"].map(best))
    return out[["step", "prompt_id", "gold", "acc_no_policy", "acc_policy_aware", "reward_mean",
                "advantage_of_correct", "group"]].reset_index(drop=True)


def first_rescued_group(df: pd.DataFrame) -> pd.DataFrame:
    """The completions of the first group PolicyRollout rescued (`policy_rescues`: no no-policy completion right, a
    policy-aware one right), earliest step first, ties in log order; its no-policy half first, as the trainer pools
    the 2G rewards (`advantages.poro_advantages`). A ValueError when the log holds no rescued group."""
    rescued = policy_rescues(df)
    if rescued.empty:
        raise ValueError("no rescued group in this rollout log: no group had every no-policy completion wrong and a "
                         "policy-aware one right (a plain GRPO log has no policy-aware half at all)")
    key = rescued.sort_values("step", kind="stable")["group"].iloc[0]
    return no_policy_first(df[df["group"] == key])


def no_policy_first(group: pd.DataFrame) -> pd.DataFrame:
    """A group's rows in the order the trainer pools them: the no-policy half first (stable within each half)."""
    return group.sort_values("source", key=lambda s: s != NO_POLICY, kind="stable") if "source" in group else group


OUTCOMES = ("no-policy half correct", "only policy-aware correct", "no correct answer")


def group_outcomes(df: pd.DataFrame) -> pd.DataFrame:
    """Per step, how many groups had a correct no-policy completion, a correct answer only in the policy-aware
    half (PolicyRollout's rescue), or none at all (accuracy reward zero for the whole group)."""
    t = group_table(df)
    np_ok = t["acc_no_policy"].fillna(0) > 0
    pa_only = ~np_ok & (t["acc_policy_aware"].fillna(0) > 0)
    t["outcome"] = [OUTCOMES[0] if a else OUTCOMES[1] if b else OUTCOMES[2] for a, b in zip(np_ok, pa_only)]
    out = t.groupby(["step", "outcome"]).size().unstack(fill_value=0)
    return out.reindex(columns=list(OUTCOMES), fill_value=0)


def group_arithmetic(group: pd.DataFrame, policy_rollout: bool = True, scale: str = "group") -> dict:
    """The advantage arithmetic of one group, recomputed by `mpi_kit.advantages` (the functions training uses):
    each completion's half, reward, recomputed and logged advantage, in the order the trainer pools them (the
    no-policy half first), plus the group's mean and std."""
    g = no_policy_first(group)
    r = g["reward"].astype(float).tolist()
    adv = _advantages(r, policy_rollout, scale)
    rows = pd.DataFrame({"source": g["source"].tolist() if "source" in g else [NO_POLICY] * len(r), "reward": r,
                         "advantage": adv, "logged": g["advantage"].astype(float).tolist()}, index=g.index)
    std = float(rows["reward"].std()) if len(r) > 1 else 0.0  # sample std, as the advantage takes it
    return {"rows": rows, "mean": float(rows["reward"].mean()), "std": std,
            "rule": "pooled 2G group (PolicyRollout)" if policy_rollout else "one group (GRPO)", "scale": scale}


def _advantages(rewards: list, policy_rollout: bool, scale: str) -> list[float]:
    """The advantages of one group: PolicyRollout's pooled rule (`advantages.poro_advantages`) or GRPO's."""
    from . import advantages

    if policy_rollout and len(rewards) % 2 == 0:
        return advantages.poro_advantages(rewards, len(rewards) // 2, scale).tolist()
    return advantages.group_advantages(rewards, len(rewards), scale).tolist()


def rescore(text: str, gold: str | None, group_rewards=None, index: int | None = None, task=None,
            policy_rollout: bool = True, scale: str = "group") -> dict:
    """The task's rewards on an (edited) completion: format, accuracy, weighted total, parsed answer, and, given
    the group's rewards (no-policy half first) and this completion's position in it, the advantage it would now
    get by the same function training uses (`mpi_kit.advantages`)."""
    from .tasks import get_task

    task = get_task(task)
    fmt, acc = task.score(text, gold)
    total = sum(w * r for w, r in zip(task.reward_weights, (fmt, acc)))
    out = {"format_reward": fmt, "accuracy_reward": acc, "reward": total, "parsed_answer": task.parse(text)}
    if group_rewards is not None and index is not None:
        r = [float(x) for x in group_rewards]
        r[index] = total
        out["advantage"] = _advantages(r, policy_rollout, scale)[index] if len(r) > 1 else 0.0
    return out


def summary_table(run_dir) -> str:
    """A per-step text table of a run's rollouts (what `mpi-kit inspect RUN_DIR` prints)."""
    s = step_stats(load_rollouts(run_dir))
    cols = ["step", "groups", "reward_mean", "reward_std", "frac_zero_std", "format", "accuracy",
            "reward_no_policy", "reward_policy_aware", "rescued_groups", "frac_truncated", "mean_length"]
    return s[[c for c in cols if c in s]].to_string(index=False, float_format=lambda v: f"{v:.3f}", na_rep="-")


__all__ = ["NO_POLICY", "POLICY_AWARE", "REWARD_COLUMNS", "load_rollouts", "run_summary", "find_data_dir",
           "group_table", "filter_rows", "filter_groups", "step_stats", "policy_rescues", "first_rescued_group",
           "group_outcomes", "OUTCOMES", "rescore", "group_arithmetic", "answer_text", "summary_table"]
