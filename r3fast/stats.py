"""95 % intervals, shared by every evaluation: Wilson for accuracies, percentile bootstrap for means,
paired bootstrap for gaps (the same examples scored two ways)."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

__all__ = ["bootstrap_mean", "paired_bootstrap", "seeds_bootstrap", "wilson"]

Z95 = 1.959963984540054


def wilson(k: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n (valid at k = 0 and k = n, unlike the normal one)."""
    if n <= 0:
        return (0.0, 1.0)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def _quantiles(values: list[float], level: float) -> tuple[float, float]:
    values = sorted(values)
    lo = values[int((1 - level) / 2 * (len(values) - 1))]
    hi = values[int(round((1 + level) / 2 * (len(values) - 1)))]
    return (lo, hi)


def bootstrap_mean(
    x: Sequence[float], *, resamples: int = 10_000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of mean(x)."""
    if not x:
        return (0.0, 0.0)
    rng, n = random.Random(seed), len(x)
    means = [sum(x[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples)]
    return _quantiles(means, level)


def paired_bootstrap(
    a: Sequence[float], b: Sequence[float], *, resamples: int = 10_000, level: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """(mean(b - a), lo, hi): the gap of b over a on the same examples, examples resampled together."""
    if len(a) != len(b):
        raise ValueError(f"paired samples need equal lengths, got {len(a)} and {len(b)}")
    d = [y - x for x, y in zip(a, b)]
    mean = sum(d) / len(d) if d else 0.0
    return (mean, *bootstrap_mean(d, resamples=resamples, level=level, seed=seed))


def seeds_bootstrap(
    diffs: Sequence[Sequence[float]], *, resamples: int = 10_000, level: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """(mean, lo, hi) of a gap measured per seed on the same problems (diffs[s][i]: seed s, problem i):
    each resample draws the seeds and the problems with replacement (one problem draw shared by the
    seeds, as they share the problems), so the interval carries both sources of variation."""
    s, n = len(diffs), len(diffs[0]) if diffs else 0
    if s == 0 or n == 0 or any(len(d) != n for d in diffs):
        raise ValueError("need at least one seed, each with the same non-zero number of problems")
    mean = sum(map(sum, diffs)) / (s * n)
    rng, stats = random.Random(seed), []
    for _ in range(resamples):
        seeds = [diffs[rng.randrange(s)] for _ in range(s)]
        idx = [rng.randrange(n) for _ in range(n)]
        stats.append(sum(d[i] for d in seeds for i in idx) / (s * n))
    return (mean, *_quantiles(stats, level))
