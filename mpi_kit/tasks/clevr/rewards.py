"""ClevrPolicy's rewards for RL: plain functions `fn(completions, **kwargs) -> list[float]`, as TRL expects.

format:   1 if the completion is `<think>...</think>` followed by `\\boxed{...}` and nothing else, else 0.
accuracy: 1 if the boxed answer equals the gold case exactly (paper Eq. 4), else 0.
Weighted by `mpi_kit.rewards.REWARD_WEIGHTS`. Neither function raises, whatever the completion, and both parse in
time linear in its length (string search, no backtracking regex): they run on every RL completion.
"""
from __future__ import annotations

from ...rewards import REWARD_WEIGHTS, after_think, completion_text, last_boxed, one_gold_each


def parse_answer(text) -> str | None:
    """The case a completion answers: the content of its last `\\boxed{...}`, stripped; None if there is none."""
    return last_boxed(text)


def format_reward(completions, **kwargs) -> list[float]:
    """1.0 for `<think>reasoning</think>\\boxed{answer}`, 0.0 otherwise."""
    out = []
    for c in one_gold_each("format_reward", completions, None, "", "")[0]:
        try:
            rest = after_think(completion_text(c))
            rest = "" if rest is None else rest.strip()
            inner = rest[len("\\boxed{"):-1]
            ok = rest.startswith("\\boxed{") and rest.endswith("}") and "{" not in inner and "}" not in inner
            out.append(1.0 if ok else 0.0)
        except Exception:  # an unreadable completion
            out.append(0.0)
    return out


def accuracy_reward(completions, case=None, **kwargs) -> list[float]:
    """1.0 when the last boxed answer is exactly the gold `case` column (e.g. "Case 3"), 0.0 otherwise."""
    completions, golds = one_gold_each("accuracy_reward", completions, case, "case", "gold cases")
    out = []
    for c, gold in zip(completions, golds):
        try:
            answer = parse_answer(c)
            out.append(1.0 if answer is not None and gold is not None and answer == str(gold).strip() else 0.0)
        except Exception:
            out.append(0.0)
    return out


REWARD_FUNCS = (format_reward, accuracy_reward)


def total_reward(completion, case) -> float:
    """The weighted reward of one completion, as the trainer computes it."""
    return sum(w * f([completion], case=[case])[0] for w, f in zip(REWARD_WEIGHTS, REWARD_FUNCS))
