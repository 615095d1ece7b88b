"""95% intervals for accuracies: every accuracy the kit reports (results.json, tables, notebooks, the model card)
carries its n and a Wilson interval from here. Two methods scored on the same rows are compared with the exact
McNemar test (`mcnemar_exact`)."""
from __future__ import annotations

from math import comb


def wilson_percent(k: int, n: int) -> list[float]:
    """`wilson_interval` in percent, to one decimal: how results.json, tables and notebooks show an interval."""
    return [round(100 * x, 1) for x in wilson_interval(k, n)]


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval for k successes in n trials, as fractions. Unlike k/n +- 1.96 SE it stays inside
    [0, 1] and is honest at 0% or 100% with small n (0 of 24 is 0-14%, not 0-0%)."""
    if n <= 0:
        return (0.0, 1.0)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * ((p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def discordant(a, b) -> tuple[int, int]:
    """The rows where two methods disagree, as McNemar counts them: (right only for a, right only for b).
    `a[i]` and `b[i]` say whether each method got row i right; rows both got right or both got wrong say nothing."""
    a, b = [bool(x) for x in a], [bool(x) for x in b]
    if len(a) != len(b):
        raise ValueError(f"paired outcomes need one per row for both methods, got {len(a)} and {len(b)}")
    return sum(x and not y for x, y in zip(a, b)), sum(y and not x for x, y in zip(a, b))


def mcnemar_exact(a, b) -> float:
    """Exact McNemar p-value for two methods scored on the same rows (`a[i]`, `b[i]`: right on row i?). If neither
    is better, each of the n rows where they disagree is a fair coin, so the two-sided p is
    min(1, 2 * P(Binomial(n, 1/2) <= the smaller discordant count)); 1 when they never disagree."""
    only_a, only_b = discordant(a, b)
    n = only_a + only_b
    if n == 0:
        return 1.0
    tail = sum(comb(n, i) for i in range(min(only_a, only_b) + 1))
    return min(1.0, 2 * tail / 2 ** n)
