"""The paper's evaluation metrics (docs/objectives.md, Evaluation), with N and 95% confidence intervals.

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


# --- Paired comparisons of two methods on the same prompts -------------------------------------

OUTCOMES = ("ras_strict", "ras_win_tie", "nag_net")


def per_prompt(kind: str, r_post: Sequence[float | None], r_pre: Sequence[float | None] | None = None
               ) -> list[float | None]:
    """Each prompt's outcome behind a metric, so two methods can be compared prompt by prompt:
    ``ras_strict`` 1[R > 0], ``ras_win_tie`` 1[R >= 0], ``nag_net`` sign(R_post − R_pre) (its mean
    is the net NAG). None where a reward is None."""
    if kind == "ras_strict":
        return [None if r is None else float(r > 0) for r in r_post]
    if kind == "ras_win_tie":
        return [None if r is None else float(r >= 0) for r in r_post]
    if kind == "nag_net":
        if r_pre is None:
            raise ValueError("per_prompt('nag_net') needs the base model's rewards r_pre")
        return [None if a is None or b is None else float((a > b) - (a < b)) for a, b in zip(r_post, r_pre, strict=True)]
    raise ValueError(f"unknown outcome {kind!r}; one of {OUTCOMES}")


@dataclass(frozen=True)
class PairedTest:
    """Method A minus method B over the same prompts."""

    diff: float  # mean over prompts of a − b
    low: float  # paired bootstrap 95% percentile interval of the mean difference
    high: float
    p_value: float  # two-sided paired permutation (sign-flip) test of "no difference"
    n: int  # prompts with both outcomes
    exact: bool  # p enumerated over every sign assignment (else Monte Carlo)

    def as_dict(self) -> dict[str, float | int | bool]:
        return asdict(self)


EXACT_MAX = 16  # enumerate all 2^k sign flips up to k non-zero differences


def permutation_p(diffs: Sequence[float], n_resamples: int = 20000, seed: int = 0) -> tuple[float, bool]:
    """Two-sided p of the paired sign-flip test: under "no difference" each prompt's a − b is
    as likely as b − a, so p = P(|Σ s_k d_k| >= |Σ d_k|) over random signs s. Exact when at most
    ``EXACT_MAX`` differences are non-zero, otherwise Monte Carlo with the (1 + hits)/(1 + n)
    correction (never 0). Returns (p, exact)."""
    import numpy as np

    d = np.asarray([x for x in diffs if x != 0], dtype=np.float64)
    if len(d) == 0:
        return 1.0, True
    observed = abs(d.sum()) - 1e-12 * len(d)  # tolerance: ties with the observed sum count
    if len(d) <= EXACT_MAX:
        signs = 1 - 2 * ((np.arange(2 ** len(d))[:, None] >> np.arange(len(d))) & 1)
        return float((np.abs(signs @ d) >= observed).mean()), True
    rng = np.random.default_rng(seed)
    hits = 0
    for start in range(0, n_resamples, 4096):
        signs = rng.choice([-1.0, 1.0], size=(min(4096, n_resamples - start), len(d)))
        hits += int((np.abs(signs @ d) >= observed).sum())
    return (1 + hits) / (1 + n_resamples), False


def bootstrap_ci(diffs: Sequence[float], n_resamples: int = 5000, seed: int = 0, level: float = 0.95
                 ) -> tuple[float, float]:
    """Percentile interval of the mean of ``diffs`` over prompts resampled with replacement."""
    import numpy as np

    d = np.asarray(diffs, dtype=np.float64)
    if len(d) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), size=(n_resamples, len(d)))].mean(1)
    tail = (1 - level) / 2
    return float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


def paired_test(a: Sequence[float | None], b: Sequence[float | None], n_resamples: int = 20000,
                seed: int = 0) -> PairedTest:
    """Compare two methods' per-prompt outcomes (same prompts, same order; e.g. ``per_prompt``
    values, or their means over seeds): mean difference, bootstrap interval, permutation p."""
    d = [x - y for x, y in zip(a, b, strict=True) if x is not None and y is not None]
    if not d:
        nan = float("nan")
        return PairedTest(nan, nan, nan, 1.0, 0, True)
    p, exact = permutation_p(d, n_resamples, seed)
    low, high = bootstrap_ci(d, min(n_resamples, 5000), seed)
    return PairedTest(sum(d) / len(d), low, high, p, len(d), exact)
