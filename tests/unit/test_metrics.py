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
