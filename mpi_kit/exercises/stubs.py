"""The exercises as a learner first meets them: each function's docstring says what to write, its body is empty.

Copy one into a notebook cell, fill in the body and grade it with `check(name, fn)`. `holds` is given: walking a
policy is the exercise, not testing one condition.
"""
from __future__ import annotations


def holds(condition, scene) -> bool:
    """Does `scene` answer yes to `condition`? A condition asks about its whole subject, stacked from the
    conditions above it on yes edges ("a small cyan object?"), so this asks the scene about every part of it."""
    return scene.has(**condition.subject)


def walk_policy(policy, scene) -> str:
    """The case ClevrPolicy `policy` gives for `scene`, e.g. "Case 3".

    Start at `policy.root`, a condition id. `policy.conditions[cid]` is that condition: go to its `.yes` when
    `holds(condition, scene)`, else to its `.no`. Each names the next condition id or a case; stop at a case."""
    raise NotImplementedError("walk_policy: write the tree walk")


def vmcpt_labels(input_ids: list[int], attention_mask: list[int], visual_ids: list[int]) -> list[int]:
    """VM-CPT's labels for one tokenized sequence (paper Eq. 2): the loss falls on every text token, the policy
    text included, and on nothing else.

    Return a list as long as `input_ids`: the token's own id where it carries loss, -100 on visual tokens (any id
    in `visual_ids`: image pads and the vision start/end markers) and on padding (`attention_mask` 0)."""
    raise NotImplementedError("vmcpt_labels: write the loss mask")


def completion_labels(prompt_ids: list[int], completion_ids: list[int], pad_to: int) -> list[int]:
    """SFT's completion-only labels for one row of a batch: the sequence is `prompt_ids + completion_ids`,
    right-padded to `pad_to` tokens (the batch's longest row).

    Return `pad_to` labels: -100 over the prompt and the padding, the completion's own ids where the loss falls.
    Labels are not shifted: the model shifts them itself."""
    raise NotImplementedError("completion_labels: write the completion-only labels")


def format_reward(completions, **kwargs) -> list[float]:
    """ClevrPolicy's format reward, TRL style: one float per completion. A completion is a conversation,
    `[{"role": "assistant", "content": text}]`.

    1.0 when the text is `<think>reasoning</think>` followed by one `\\boxed{answer}` and nothing else (spaces
    around them are fine; no braces inside the box, no second <think>), else 0.0."""
    raise NotImplementedError("format_reward: write the format check")


def accuracy_reward(completions, case, **kwargs) -> list[float]:
    """ClevrPolicy's accuracy reward, TRL style: `case[i]` is completion i's gold answer, e.g. "Case 3".

    1.0 when the LAST `\\boxed{...}` in the completion's text, stripped of spaces, equals the gold case exactly,
    else 0.0 (no box at all is 0.0). The format does not matter here: `format_reward` scores it."""
    raise NotImplementedError("accuracy_reward: write the answer check")


def pooled_advantage(rewards: list[float], G: int) -> list[float]:
    """PolicyRollout's advantages (paper Eq. 3). The rewards come in groups of 2G, one group per prompt laid out
    one after the other: G completions sampled without the policy, then G with it in context.

    Pool each group's 2G rewards, then advantage = (reward - group mean) / (group std + 1e-4), with the sample
    std (divide by 2G - 1). A group whose rewards are all equal gives zeros."""
    raise NotImplementedError("pooled_advantage: write the pooled group advantage")


def wilson_interval(k: int, n: int) -> tuple[float, float]:
    """The 95% Wilson score interval (z = 1.96) for k successes in n trials, as (low, high) fractions.

    With p = k / n: centre = (p + z^2 / 2n) / (1 + z^2 / n) and half = z * sqrt(p(1 - p) / n + z^2 / 4n^2) /
    (1 + z^2 / n); the interval is centre +- half, clipped to [0, 1]. With n = 0 nothing is known: (0.0, 1.0)."""
    raise NotImplementedError("wilson_interval: write the interval")


def mcnemar_exact(a: list[bool], b: list[bool]) -> float:
    """The exact McNemar p-value: did methods A and B differ on the same rows? `a[i]`, `b[i]`: right on row i.

    Count the discordant rows: only_a = right for A only, only_b = right for B only (rows both got right or both
    got wrong say nothing). Two-sided exact binomial test, with n = only_a + only_b:
    p = min(1, 2 * sum_{i <= min(only_a, only_b)} C(n, i) / 2^n), and p = 1.0 when n = 0."""
    raise NotImplementedError("mcnemar_exact: write the test")
