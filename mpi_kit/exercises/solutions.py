"""Reference solutions, written as a learner would write them: plain Python, one idea per function.

A teacher may withhold this file: the stubs, the graders and `check` work without it (`reference` then says so).
The graders never use it; they compare against the kit's own implementation.
"""
from __future__ import annotations

import math

from .stubs import holds


def walk_policy(policy, scene) -> str:
    node = policy.root
    while node in policy.conditions:  # a condition id; anything else is a case
        condition = policy.conditions[node]
        node = condition.yes if holds(condition, scene) else condition.no
    return node


def vmcpt_labels(input_ids, attention_mask, visual_ids) -> list[int]:
    visual = set(visual_ids)
    return [-100 if not keep or tid in visual else tid for tid, keep in zip(input_ids, attention_mask)]


def completion_labels(prompt_ids, completion_ids, pad_to) -> list[int]:
    padding = pad_to - len(prompt_ids) - len(completion_ids)
    return [-100] * len(prompt_ids) + list(completion_ids) + [-100] * padding


def _text(completion) -> str:
    return completion[-1]["content"]


def format_reward(completions, **kwargs) -> list[float]:
    out = []
    for completion in completions:
        text = _text(completion).strip()
        reasoning, _, rest = text.partition("</think>")
        rest = rest.strip()
        ok = (text.startswith("<think>") and "</think>" in text and "<think>" not in reasoning[len("<think>"):]
              and rest.startswith("\\boxed{") and rest.endswith("}")
              and not any(ch in rest[len("\\boxed{"):-1] for ch in "{}"))
        out.append(1.0 if ok else 0.0)
    return out


def _last_boxed(text: str) -> str | None:
    start = text.rfind("\\boxed{")
    while start >= 0:
        inner = text[start + len("\\boxed{"):]
        end = inner.find("}")
        if end >= 0 and "{" not in inner[:end]:
            return inner[:end].strip()
        start = text.rfind("\\boxed{", 0, start)
    return None


def accuracy_reward(completions, case, **kwargs) -> list[float]:
    return [1.0 if _last_boxed(_text(c)) == gold.strip() else 0.0 for c, gold in zip(completions, case)]


def pooled_advantage(rewards, G) -> list[float]:
    out = []
    for start in range(0, len(rewards), 2 * G):
        group = rewards[start:start + 2 * G]  # no-policy half, then policy-aware half: pooled
        mean = sum(group) / len(group)
        std = math.sqrt(sum((r - mean) ** 2 for r in group) / (len(group) - 1))  # sample std
        out += [(r - mean) / (std + 1e-4) for r in group]
    return out


def wilson_interval(k, n) -> tuple[float, float]:
    z = 1.96  # 95%
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def mcnemar_exact(a, b) -> float:
    only_a = sum(x and not y for x, y in zip(a, b))
    only_b = sum(y and not x for x, y in zip(a, b))
    n = only_a + only_b
    if n == 0:
        return 1.0
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(min(only_a, only_b) + 1)) / 2 ** n)
