"""Rewards for RL on policies: plain functions `fn(completions, **kwargs) -> list[float]`, as TRL expects.

format:   1 if the completion is `<think>...</think>` followed by `\\boxed{...}` and nothing else, else 0.
accuracy: 1 if the boxed answer equals the gold case exactly (paper Eq. 4), else 0.
They are combined with weights 0.1 / 0.9 (`REWARD_WEIGHTS`): the paper does not state its weights; these are
EasyR1's defaults, which the paper's RL settings match. Neither function raises, whatever the completion, and
both parse in time linear in its length (string search, no backtracking regex): they run on every RL completion.
"""
from __future__ import annotations

import re

REWARD_WEIGHTS = (0.1, 0.9)
_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")  # linear: each match stops at the next brace


def completion_text(completion) -> str:
    """The text of a completion: a string, or TRL's conversational [{"role": "assistant", "content": ...}]."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        content = completion[-1].get("content", "")
        if isinstance(content, list):  # content parts
            return "".join(str(p.get("text") or "") for p in content if isinstance(p, dict))
        return content if isinstance(content, str) else str(content)
    return "" if completion is None else str(completion)


def after_think(text: str) -> str | None:
    """What follows a leading `<think>reasoning</think>` (no other <think> inside), or None when the text does not
    start that way. Plain string search, so linear in the length whatever the text holds."""
    text = text.lstrip()
    end = text.find("</think>")
    if not text.startswith("<think>") or end < 0 or text.find("<think>", 7, end) >= 0:
        return None
    return text[end + len("</think>"):]


def one_gold_each(fn: str, completions, golds, column: str, what: str) -> tuple[list, list]:
    """(completions, golds) as two lists of the same length: a single gold (or None) is repeated for every
    completion; a list must hold one per completion, else a ValueError naming the mismatch."""
    if isinstance(completions, (str, bytes, dict)):
        raise ValueError(f"{fn} wants a list of completions, got one {type(completions).__name__}")
    completions = list(completions)
    golds = list(golds) if isinstance(golds, (list, tuple)) else [golds] * len(completions)
    if len(golds) != len(completions):
        raise ValueError(f"{fn} got {len(completions)} completions but {len(golds)} {what}; pass one `{column}` "
                         f"per completion (TRL repeats each row's columns for its G completions)")
    return completions, golds


def parse_answer(text) -> str | None:
    """The content of the last `\\boxed{...}`, stripped; None if there is none."""
    try:
        found = _BOXED.findall(completion_text(text))
    except Exception:
        return None
    return found[-1].strip() if found else None


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
