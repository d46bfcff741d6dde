"""Statistics for comparing methods, with the seed as the unit of inference (design §5).

A trained checkpoint is one draw: a seed fixes the rollouts, the data order and the eval samples,
so run-to-run variance only shows across seeds. Every interval and test here therefore resamples
or permutes seeds first; prompts matter only within a seed.

- ``Arm``: one method's per-(seed, prompt) outcomes; ``paired`` checks that two arms hold the
  same seeds and prompt ids (never assumes an order) and returns their per-prompt differences.
- ``hierarchical_bootstrap``: percentile interval of the mean, resampling seeds, then prompts
  within each drawn seed (two-stage bootstrap; with prompts crossed with seeds it is slightly
  conservative: the prompt-level noise enters the seed means as well).
- ``sign_flip_test``: paired test over seeds of the per-seed mean differences (under "no
  difference" each seed's difference is as likely as its negative); exact up to ``EXACT_MAX``
  seeds, so its smallest p is 2/2^S: with 3 seeds no test can go below 0.25.
- ``holm``: step-down adjustment within a family declared before the run.
- ``mde``: the smallest paired difference the seed-level test detects with power 0.8.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

EXACT_MAX = 16  # enumerate every sign assignment up to this many seeds


class PairingError(ValueError):
    """Two arms do not hold the same seeds and prompt ids."""


@dataclass(frozen=True)
class Arm:
    """Outcomes of one method: ``values[i, j]`` of seed ``seeds[i]`` on prompt ``prompts[j]``;
    NaN where the prompt has no valid outcome (an invalid score) in that seed."""

    seeds: tuple[int, ...]
    prompts: tuple[str, ...]
    values: np.ndarray
    present: np.ndarray  # bool [seeds, prompts]: the row exists (NaN or not)

    @classmethod
    def from_rows(cls, rows: Iterable[tuple[int, str, float | None]], name: str = "arm") -> Arm:
        """(seed, prompt id, value or None) rows; a repeated (seed, prompt id) is an error."""
        cells: dict[tuple[int, str], float] = {}
        for seed, pid, v in rows:
            if (seed, pid) in cells:
                raise PairingError(f"{name}: prompt id {pid!r} appears twice in seed {seed}")
            cells[(seed, pid)] = float("nan") if v is None else float(v)
        seeds = tuple(sorted({s for s, _ in cells}))
        prompts = tuple(sorted({p for _, p in cells}))
        si, pi = {s: i for i, s in enumerate(seeds)}, {p: j for j, p in enumerate(prompts)}
        values = np.full((len(seeds), len(prompts)), np.nan)
        present = np.zeros((len(seeds), len(prompts)), dtype=bool)
        for (s, p), v in cells.items():
            values[si[s], pi[p]] = v
            present[si[s], pi[p]] = True
        return cls(seeds, prompts, values, present)

    def seed_means(self) -> np.ndarray:
        """Each seed's mean over its valid prompts (NaN for a seed without any)."""
        return _nanmean(self.values, axis=1)


def _nanmean(x: np.ndarray, axis: int) -> np.ndarray:
    valid = ~np.isnan(x)
    n = valid.sum(axis=axis)
    s = np.where(valid, x, 0.0).sum(axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, s / np.maximum(n, 1), np.nan)


def _ids(cells: set[tuple[int, str]], limit: int = 5) -> str:
    shown = ", ".join(f"seed {s} prompt {p}" for s, p in sorted(cells)[:limit])
    return shown + (f" and {len(cells) - limit} more" if len(cells) > limit else "")


def paired(a: Arm, b: Arm, a_name: str = "a", b_name: str = "b") -> Arm:
    """``a − b`` prompt by prompt within each seed, after checking that both arms hold exactly
    the same (seed, prompt id) cells; NaN where either outcome is invalid."""
    ca = {(s, p) for i, s in enumerate(a.seeds) for j, p in enumerate(a.prompts) if a.present[i, j]}
    cb = {(s, p) for i, s in enumerate(b.seeds) for j, p in enumerate(b.prompts) if b.present[i, j]}
    if ca != cb:
        problems = []
        if ca - cb:
            problems.append(f"{len(ca - cb)} in {a_name} only ({_ids(ca - cb)})")
        if cb - ca:
            problems.append(f"{len(cb - ca)} in {b_name} only ({_ids(cb - ca)})")
        raise PairingError(f"{a_name} vs {b_name}: the arms do not hold the same seeds and prompt ids: "
                           + "; ".join(problems) + "; evaluate both on the same prompts and seeds")
    return Arm(a.seeds, a.prompts, a.values - b.values, a.present)


# --- intervals -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Interval:
    value: float  # mean over seeds of the per-seed means
    low: float
    high: float
    n_seeds: int
    n_prompts: int
    n_resamples: int


def grand_mean(arm: Arm) -> float:
    """Mean over seeds of each seed's mean over prompts: every seed weighs the same."""
    m = arm.seed_means()
    m = m[~np.isnan(m)]
    return float(m.mean()) if len(m) else float("nan")


def hierarchical_bootstrap(arm: Arm, n_resamples: int = 2000, seed: int = 0, level: float = 0.95) -> Interval:
    """Percentile interval of ``grand_mean``: draw seeds with replacement, then, within each
    drawn seed, its valid prompts with replacement (a paired difference arm resamples the
    prompt ids of both methods together, since it holds their differences)."""
    rows = [r[~np.isnan(r)] for r in arm.values]
    rows = [r for r in rows if len(r)]
    value = grand_mean(arm)
    if not rows:
        return Interval(value, float("nan"), float("nan"), 0, 0, n_resamples)
    rng = np.random.default_rng(seed)
    n_s = len(rows)
    # The per-seed prompt means of every resample: (resamples, seeds) draws per seed row.
    prompt_means = np.stack([r[rng.integers(0, len(r), size=(n_resamples, len(r)))].mean(1) for r in rows], 1)
    pick = rng.integers(0, n_s, size=(n_resamples, n_s))
    stats = np.take_along_axis(prompt_means, pick, axis=1).mean(1)
    tail = (1 - level) / 2
    return Interval(value, float(np.quantile(stats, tail)), float(np.quantile(stats, 1 - tail)), n_s,
                    int(sum(len(r) for r in rows)), n_resamples)


# --- the seed-level paired test --------------------------------------------------------------

@dataclass(frozen=True)
class PValue:
    """A p-value with the smallest value its procedure can give (``floor``): exact enumeration
    over S seeds cannot go below 2/2^S; Monte Carlo with B draws cannot resolve below 1/B."""

    value: float
    floor: float
    exact: bool
    n_resamples: int  # sign assignments enumerated or drawn

    def text(self, value: float | None = None) -> str:
        """``p = 0.031``, or ``p < 1e-04`` where Monte Carlo found no draw as extreme, or ``p =
        0.0078 (the minimum with 8 seeds)`` at the floor of the exact test. ``value``: an
        adjusted p of this test (Holm), written with the same floor."""
        v = self.value if value is None else value
        if not self.exact and v <= self.floor * (1 + 1e-9):
            return f"p < {1 / self.n_resamples:.1g}"
        if self.exact and v <= self.floor * (1 + 1e-9):
            n = round(math.log2(self.n_resamples))
            return f"p = {v:.2g} (the minimum with {n} seed{'s' if n != 1 else ''})"
        return f"p = {v:.2g}"


def sign_flip_test(seed_diffs: Sequence[float], n_resamples: int = 20000, seed: int = 0) -> PValue:
    """Two-sided p of "no difference" from the per-seed mean differences d_s: p = P(|Σ ε_s d_s|
    >= |Σ d_s|) over independent random signs ε_s. Exact (every 2^S assignment) up to
    ``EXACT_MAX`` seeds, else Monte Carlo with the (1 + hits)/(1 + B) correction, never 0."""
    d = np.asarray([x for x in seed_diffs if not math.isnan(x)], dtype=np.float64)
    if len(d) == 0:
        return PValue(1.0, 1.0, True, 1)
    observed = abs(d.sum()) - 1e-12 * max(1.0, float(np.abs(d).sum()))  # ties with the observed count
    if len(d) <= EXACT_MAX:
        signs = 1 - 2 * ((np.arange(2 ** len(d))[:, None] >> np.arange(len(d))) & 1)
        p = float((np.abs(signs @ d) >= observed).mean())
        return PValue(p, min(1.0, 2 / 2 ** len(d)), True, 2 ** len(d))
    rng = np.random.default_rng(seed)
    hits = 0
    for start in range(0, n_resamples, 4096):
        signs = rng.choice([-1.0, 1.0], size=(min(4096, n_resamples - start), len(d)))
        hits += int((np.abs(signs @ d) >= observed).sum())
    return PValue((1 + hits) / (1 + n_resamples), 1 / (1 + n_resamples), False, n_resamples)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error within one family): the i-th
    smallest of m is multiplied by (m − i + 1), made monotone, capped at 1; input order kept."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    out = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        out[i] = running
    return out


# --- minimum detectable effect ---------------------------------------------------------------

def _t_cdf(x: float, df: int) -> float:
    """Student t CDF by Simpson integration of the density from 0 (df >= 1)."""
    if x < 0:
        return 1 - _t_cdf(-x, df)
    c = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)
    n = 2000
    h = x / n
    f = [c * (1 + (i * h) ** 2 / df) ** (-(df + 1) / 2) for i in range(n + 1)]
    return 0.5 + h / 3 * (f[0] + f[-1] + 4 * sum(f[1:-1:2]) + 2 * sum(f[2:-1:2]))


@lru_cache(maxsize=256)
def t_quantile(q: float, df: int) -> float:
    """The q-quantile of Student's t with ``df`` degrees of freedom (bisection; q in (0.5, 1))."""
    lo, hi = 0.0, 1.0
    while _t_cdf(hi, df) < q:
        hi *= 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _t_cdf(mid, df) < q else (lo, mid)
    return (lo + hi) / 2


def mde(seed_diffs: Sequence[float], alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest true mean difference a two-sided test at ``alpha`` detects with ``power``, from
    the spread of the per-seed differences: (t_{1−α/2} + t_{power}) · sd / √S, df = S − 1 (the
    paired t approximation of the sign-flip test). Infinite where the seed-level test cannot
    reach ``alpha`` at all (2/2^S > α) or fewer than 2 seeds give no spread."""
    d = np.asarray([x for x in seed_diffs if not math.isnan(x)], dtype=np.float64)
    s = len(d)
    if s < 2 or 2 / 2 ** s > alpha:
        return math.inf
    sd = float(d.std(ddof=1))
    return (t_quantile(1 - alpha / 2, s - 1) + t_quantile(power, s - 1)) * sd / math.sqrt(s)


# --- one comparison ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Comparison:
    """``variant − baseline`` on one metric, seed as the unit."""

    diff: Interval  # mean difference with its hierarchical bootstrap interval
    seed_diffs: tuple[float, ...]  # per-seed mean differences, the test's data
    p: PValue
    mde: float


def compare(a: Arm, b: Arm, a_name: str = "a", b_name: str = "b", n_bootstrap: int = 2000,
            n_permutations: int = 20000, alpha: float = 0.05, seed: int = 0) -> Comparison:
    d = paired(a, b, a_name, b_name)
    seed_diffs = tuple(float(x) for x in d.seed_means())
    return Comparison(hierarchical_bootstrap(d, n_bootstrap, seed), seed_diffs,
                      sign_flip_test(seed_diffs, n_permutations, seed), mde(seed_diffs, alpha))
