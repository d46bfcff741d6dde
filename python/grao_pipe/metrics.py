"""The paper's evaluation metrics (design §5), with N and 95% confidence intervals.

R values are reference-relative comparative rewards (R > 0: better than the reference).
Rows whose R is None (unparseable judge answer, scorer error) are excluded and counted.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

Z95 = 1.959963984540054


@dataclass(frozen=True)
class Estimate:
    value: float
    low: float
    high: float
    n: int

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def wilson(successes: int, n: int, z: float = Z95) -> Estimate:
    """A proportion with its Wilson score interval (good at 0, 1 and small n)."""
    if n == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # min/max with p: rounding must not put the interval beside its own estimate at 0 or 1.
    return Estimate(p, max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half)), n)


def mean_ci(values: Sequence[float], z: float = Z95) -> Estimate:
    """A mean with a normal-approximation interval (for the net NAG, values in {-1, 0, 1})."""
    n = len(values)
    if n == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0)
    m = sum(values) / n
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    half = z * sd / math.sqrt(n)
    return Estimate(m, max(-1.0, m - half), min(1.0, m + half), n)


def ras(r_post: Sequence[float | None]) -> dict[str, Estimate]:
    """Relative Adversarial Score: share of prompts where the response beats the reference
    (strict, R > 0), and the win+tie share (R >= 0)."""
    valid = [r for r in r_post if r is not None]
    return {"strict": wilson(sum(r > 0 for r in valid), len(valid)),
            "win_tie": wilson(sum(r >= 0 for r in valid), len(valid))}


def nag(r_post: Sequence[float | None], r_pre: Sequence[float | None]) -> dict[str, Estimate]:
    """Normalized Alignment Gain: share of prompts where the aligned model's response scores
    higher against the reference than the base model's (as printed), and the net form
    P(post > pre) − P(post < pre), which can be negative."""
    pairs = [(a, b) for a, b in zip(r_post, r_pre, strict=True) if a is not None and b is not None]
    signs = [(a > b) - (a < b) for a, b in pairs]
    return {"printed": wilson(sum(s > 0 for s in signs), len(signs)), "net": mean_ci([float(s) for s in signs])}
