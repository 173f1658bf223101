r"""Deciding a claim over seeds: a mean with its confidence interval.

A comparison of trained runs is noisy: another seed (initialisation, data
order) moves the result. So a claim that compares runs is decided from several
seeds with a stated statistic, the mean over seeds and its two-sided Student-t
interval,

    mean ± t_{(1+level)/2, n-1} · s / √n,          s the sample standard deviation,

taken on paired differences ``a_s - b_s`` where the design pairs the runs by
seed (same initialisation seed, same data order), which removes what the two
runs share. With one seed there is no interval: its bounds are infinite and a
check on them fails, which is what a single run deserves.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

__all__ = ["Interval", "mean_ci", "paired_ci", "t_quantile"]


@dataclass(frozen=True)
class Interval:
    """The mean of n values and its two-sided confidence interval [low, high]."""

    mean: float
    low: float
    high: float
    n: int  # how many seeds (values) it was computed from
    level: float = 0.95
    statistic: str = "mean"  # what the values are, e.g. "paired difference"

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def __str__(self) -> str:
        return f"{self.mean:.4g} [{self.low:.4g}, {self.high:.4g}] (n={self.n}, {self.level:.0%} CI)"

    def to_json(self) -> dict:
        out = asdict(self)
        for key in ("mean", "low", "high"):
            out[key] = out[key] if math.isfinite(out[key]) else None
        return out


def t_quantile(p: float, dof: int) -> float:
    """The p-quantile of Student's t with `dof` degrees of freedom."""
    from scipy.stats import t

    if dof < 1:
        raise ValueError(f"dof must be >= 1, got {dof}")
    return float(t.ppf(p, dof))


def mean_ci(values: Sequence[float], level: float = 0.95, statistic: str = "mean") -> Interval:
    """Mean of `values` and its Student-t interval at `level`; infinite bounds for one value.

    A NaN among the values (a run that diverged) makes the whole interval NaN.
    """
    xs = [float(v) for v in values]
    if not xs:
        raise ValueError("mean_ci: values must not be empty")
    if not 0.0 < level < 1.0:
        raise ValueError(f"mean_ci: level must be in (0, 1), got {level}")
    n = len(xs)
    mean = sum(xs) / n
    if any(math.isnan(x) for x in xs):
        return Interval(math.nan, math.nan, math.nan, n, level, statistic)
    if n == 1:
        return Interval(mean, -math.inf, math.inf, 1, level, statistic)
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    half = t_quantile((1 + level) / 2, n - 1) * sd / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n, level, statistic)


def paired_ci(a: Sequence[float], b: Sequence[float], level: float = 0.95,
              statistic: str = "paired difference") -> Interval:
    """Interval of the mean of a_s - b_s over seeds s (a and b paired by seed)."""
    if len(a) != len(b):
        raise ValueError(f"paired_ci: a and b must pair up by seed, got {len(a)} and {len(b)} values")
    return mean_ci([x - y for x, y in zip(a, b)], level, statistic)
