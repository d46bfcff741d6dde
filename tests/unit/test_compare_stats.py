"""The compare verb's statistics against hand-computed cases, and the seed-level test's size
under a simulated null (design §5: the seed is the unit of inference)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from grao_pipe.compare import stats
from grao_pipe.compare.stats import Arm, PairingError


def arm(table: dict[int, dict[str, float | None]]) -> Arm:
    return Arm.from_rows((s, p, v) for s, row in table.items() for p, v in row.items())


def test_seed_means_and_grand_mean_weigh_seeds_equally():
    a = arm({0: {"x": 1.0, "y": 0.0, "z": None}, 1: {"x": 1.0, "y": 1.0, "z": 1.0}})
    # seed 0: (1 + 0) / 2 (z invalid); seed 1: 1; grand mean (0.5 + 1) / 2
    assert a.seed_means().tolist() == [0.5, 1.0]
    assert stats.grand_mean(a) == 0.75


def test_pairing_is_by_prompt_id_not_order():
    a = Arm.from_rows([(0, "p1", 1.0), (0, "p2", 0.0)])
    b = Arm.from_rows([(0, "p2", 1.0), (0, "p1", 1.0)])  # other order
    d = stats.paired(a, b)
    assert dict(zip(d.prompts, d.values[0].tolist(), strict=True)) == {"p1": 0.0, "p2": -1.0}


def test_pairing_names_the_missing_ids():
    a = arm({0: {"p1": 1.0, "p2": 0.0}, 1: {"p1": 1.0, "p2": 0.0}})
    b = arm({0: {"p1": 1.0, "p3": 0.0}, 1: {"p1": 1.0, "p2": 0.0}})
    with pytest.raises(PairingError, match=r"grao vs sft: .*1 in grao only \(seed 0 prompt p2\); 1 in sft only \(seed 0 prompt p3\)"):
        stats.paired(a, b, "grao", "sft")
    with pytest.raises(PairingError, match="seed 2"):
        stats.paired(a, arm({0: {"p1": 1.0, "p2": 0.0}, 2: {"p1": 1.0, "p2": 0.0}}))
    with pytest.raises(PairingError, match="appears twice"):
        Arm.from_rows([(0, "p1", 1.0), (0, "p1", 0.0)])


def test_invalid_outcome_in_either_arm_drops_the_pair():
    a = arm({0: {"p1": 1.0, "p2": None}})
    b = arm({0: {"p1": 0.0, "p2": 1.0}})
    assert stats.grand_mean(stats.paired(a, b)) == 1.0


def test_sign_flip_exact_hand_computed():
    # d = (1, 2, 3): |±1 ±2 ±3| over the 8 assignments = 6, 4, 2, 0, 0, 2, 4, 6; P(>= 6) = 2/8
    p = stats.sign_flip_test([1.0, 2.0, 3.0])
    assert p.exact and p.value == 0.25 and p.floor == 0.25
    assert "minimum with 3 seeds" in p.text()
    # d = (1, -1, 3): observed |3|; |±1 ±1 ±3| = 5, 3, 3, 1 (each twice): P(>= 3) = 6/8
    assert stats.sign_flip_test([1.0, -1.0, 3.0]).value == 0.75
    assert stats.sign_flip_test([0.0, 0.0]).value == 1.0


def test_sign_flip_monte_carlo_is_floored_at_its_resolution():
    p = stats.sign_flip_test([1.0] * 20, n_resamples=999)
    assert not p.exact and p.value == 1 / 1000  # (1 + 0 hits) / (1 + B)
    assert p.text() == "p < 0.001"


def test_holm_hand_computed():
    # sorted 0.01, 0.02, 0.04 ×3, ×2, ×1 -> 0.03, 0.04, 0.04 (monotone)
    assert stats.holm([0.04, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])
    # 0.5 ×2 = 1.0 capped; monotone after it
    assert stats.holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])
    assert stats.holm([0.003]) == [0.003]


def test_t_quantiles_match_tables():
    assert stats.t_quantile(0.975, 7) == pytest.approx(2.364624, abs=1e-5)
    assert stats.t_quantile(0.8, 7) == pytest.approx(0.896030, abs=1e-5)
    assert stats.t_quantile(0.975, 1000) == pytest.approx(1.962339, abs=1e-4)


def test_mde_hand_computed():
    d = [0.1, 0.3, 0.2, 0.0, 0.4, 0.1, 0.2, 0.3]  # sd (ddof 1) = 0.13025...
    sd = float(np.std(d, ddof=1))
    assert stats.mde(d) == pytest.approx((2.364624 + 0.896030) * sd / math.sqrt(8), rel=1e-5)
    assert stats.mde([0.1, 0.2, 0.3, 0.4]) == math.inf  # 4 seeds: the smallest p is 1/8 > 0.05
    assert stats.mde([0.1]) == math.inf


def test_hierarchical_bootstrap_degenerate_and_seed_spread():
    const = arm({s: {f"p{j}": 0.5 for j in range(5)} for s in range(4)})
    iv = stats.hierarchical_bootstrap(const, 200)
    assert (iv.value, iv.low, iv.high) == (0.5, 0.5, 0.5)
    # Identical prompts within each seed: only the seeds vary, so the interval is the seed
    # bootstrap of (0, 1): it spans most of [0, 1] however many prompts there are.
    two = arm({0: {f"p{j}": 0.0 for j in range(500)}, 1: {f"p{j}": 1.0 for j in range(500)}})
    iv = stats.hierarchical_bootstrap(two, 2000)
    assert iv.value == 0.5 and iv.low == 0.0 and iv.high == 1.0 and iv.n_seeds == 2


def _null_data(rng: np.random.Generator, n_seeds: int, n_prompts: int) -> tuple[Arm, Arm]:
    """Two methods with no difference: a shared per-seed effect (the rollouts), a per-seed
    training noise of each method, and per-prompt noise."""
    seed_effect = rng.normal(0, 0.3, n_seeds)[:, None]
    a = seed_effect + rng.normal(0, 0.2, (n_seeds, 1)) + rng.normal(0, 1, (n_seeds, n_prompts))
    b = seed_effect + rng.normal(0, 0.2, (n_seeds, 1)) + rng.normal(0, 1, (n_seeds, n_prompts))

    def to_arm(v: np.ndarray) -> Arm:
        return Arm.from_rows((s, f"p{j}", float(v[s, j])) for s in range(n_seeds) for j in range(n_prompts))

    return to_arm(a), to_arm(b)


def test_null_rejects_at_about_its_nominal_rate():
    """8 seeds, run-to-run noise large against the prompt noise: the seed-level test rejects
    about 5% of the time (exact test: at most 6/128 = 4.7%), while a test treating the
    8 × 100 answers as independent would reject far more often."""
    rng = np.random.default_rng(7)
    n_sims, rejected, covered, prompt_level = 300, 0, 0, 0
    for _ in range(n_sims):
        a, b = _null_data(rng, 8, 100)
        c = stats.compare(a, b, n_bootstrap=200)
        rejected += c.p.value <= 0.05
        covered += c.diff.low <= 0 <= c.diff.high
        d = stats.paired(a, b).values.ravel()
        prompt_level += abs(d.mean()) / (d.std(ddof=1) / math.sqrt(len(d))) > 1.96
    rate = rejected / n_sims
    assert 0.015 <= rate <= 0.09, rate  # nominal 0.047; binomial sd 0.012 at 300 draws
    assert covered / n_sims >= 0.88, covered / n_sims  # nominal 95%, two-stage bootstrap is conservative
    assert prompt_level / n_sims > 0.2  # the pooled-answers test's false-positive rate: the reason for seeds


def test_compare_detects_a_real_difference():
    rng = np.random.default_rng(1)
    a, b = _null_data(rng, 8, 100)
    shifted = Arm(a.seeds, a.prompts, a.values + 1.0, a.present)
    c = stats.compare(shifted, b)
    assert c.p.value == pytest.approx(2 / 256) and c.diff.low > 0.4
    assert c.mde < 1.0
