"""What every task's rewards share: RL rewards are plain functions `fn(completions, **kwargs) -> list[float]`, as
TRL expects, a (format, accuracy) pair weighted `REWARD_WEIGHTS` (the paper does not state its weights; these are
EasyR1's defaults, which the paper's RL settings match). Here: reading a completion's text, the answer after its
reasoning, its last `\\boxed{...}`, and one gold per completion. Each task's own pair is in its folder
(`mpi_kit.tasks.<task>.rewards`).
"""
from __future__ import annotations

import re

_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")  # linear: each match stops at the next brace

REWARD_WEIGHTS = (0.1, 0.9)


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


def last_boxed(text) -> str | None:
    """The content of a completion's last `\\boxed{...}`, stripped; None if there is none (or it is unreadable)."""
    try:
        found = _BOXED.findall(completion_text(text))
    except Exception:
        return None
    return found[-1].strip() if found else None
