import math

import pytest

from grao_pipe.metrics import mean_ci, nag, ras, wilson


def test_ras_hand_computed():
    r = [1, 0, -1, 1, None, 0.5]  # valid: 5; > 0: 3; >= 0: 4
    out = ras(r)
    assert out["strict"].value == pytest.approx(3 / 5) and out["strict"].n == 5
    assert out["win_tie"].value == pytest.approx(4 / 5)


def test_nag_printed_and_net():
    post = [1, 0, -1, 1, 0, None]
    pre = [0, 0, 0, -1, 1, 1]
    out = nag(post, pre)  # signs: +, 0, -, +, -  (last pair dropped)
    assert out["printed"].value == pytest.approx(2 / 5) and out["printed"].n == 5
    assert out["net"].value == pytest.approx((2 - 2) / 5)
    worse = nag([-1, -1, 0], [0, 1, 1])
    assert worse["net"].value == pytest.approx(-1.0)  # the net form can be negative


def test_wilson_interval_known_value():
    # 8 of 10 at 95%: Wilson interval (0.4902, 0.9433)
    e = wilson(8, 10)
    assert (e.low, e.high) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    assert wilson(0, 5).low == 0.0 and wilson(5, 5).high == 1.0
    assert math.isnan(wilson(0, 0).value)


def test_mean_ci():
    e = mean_ci([1.0, -1.0, 1.0, 1.0])
    sd = math.sqrt(((0.5) ** 2 * 3 + 1.5**2) / 3)
    assert e.value == pytest.approx(0.5) and e.high - e.value == pytest.approx(min(1.96 * sd / 2, 0.5), rel=1e-3)


def test_per_prompt_outcomes():
    from grao_pipe.metrics import per_prompt

    post, pre = [1, 0, -1, None], [0, 0, 1, 1]
    assert per_prompt("ras_strict", post) == [1.0, 0.0, 0.0, None]
    assert per_prompt("ras_win_tie", post) == [1.0, 1.0, 0.0, None]
    assert per_prompt("nag_net", post, pre) == [1.0, 0.0, -1.0, None]


def test_permutation_p_exact_by_hand():
    from grao_pipe.metrics import permutation_p

    # Three prompts where A wins by 1, one tie: of the 2^3 sign flips only the two with all signs
    # equal reach |Σ| = 3, so p = 2/8.
    assert permutation_p([1, 1, 1, 0]) == (pytest.approx(0.25), True)
    assert permutation_p([1, 1, 1, 1, 1])[0] == pytest.approx(2 / 32)
    # |Σ| = 1 for d = (2, −1): flips give ±1 and ±3, all four reach 1.
    assert permutation_p([2, -1])[0] == pytest.approx(1.0)
    assert permutation_p([0, 0]) == (1.0, True)


def test_permutation_p_monte_carlo_matches_the_binomial():
    from grao_pipe.metrics import permutation_p

    # 12 wins, 8 losses (±1): Σ s_k d_k = 2·Bin(20, ½) − 20, so p = P(|2X − 20| >= 4) = 2·P(X >= 12).
    exact = 2 * sum(math.comb(20, k) for k in range(12, 21)) / 2**20
    p, was_exact = permutation_p([1] * 12 + [-1] * 8, n_resamples=40000, seed=1)
    assert not was_exact and p == pytest.approx(exact, abs=0.01)


def test_paired_test_difference_interval_and_none():
    from grao_pipe.metrics import paired_test

    a = [1.0] * 50 + [0.0] * 50 + [None]
    b = [0.0] * 100 + [1.0]
    t = paired_test(a, b)
    assert t.n == 100 and t.diff == pytest.approx(0.5)
    # bootstrap of a 0/1 mean: ≈ 0.5 ± 1.96·√(0.25/100)
    assert (t.low, t.high) == pytest.approx((0.5 - 0.098, 0.5 + 0.098), abs=0.02)
    assert t.p_value < 1e-3  # 50 wins, 0 losses
    same = paired_test([1.0, 0.0], [1.0, 0.0])
    assert same.diff == 0.0 and same.p_value == 1.0 and (same.low, same.high) == (0.0, 0.0)
