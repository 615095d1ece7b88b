"""95% intervals for accuracies: every accuracy the kit reports (results.json, tables, notebooks, the model card)
carries its n and a Wilson interval from here."""
from __future__ import annotations


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
