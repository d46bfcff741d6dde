"""The Rust extension grao_pipe._native against plain-Python reference implementations."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from grao_pipe import _native

MODES = _native.ADVANTAGE_MODES  # the config's choices too (test_native_schema.py)
EPS = 1e-6


# ---- plain-Python reference: the GRAO advantage definitions, written out ----


def reference_group(
    rewards: list[float | None], mode: str, eps: float, std_floor: float, min_valid: int
) -> tuple[list[float], float, bool]:
    """(sample advantages, reference advantage, degenerate) for one group."""
    valid = [r is not None and math.isfinite(r) for r in rewards]
    values = [r for r, ok in zip(rewards, valid, strict=True) if ok]
    n = len(values)
    # The reference answer y has reward R(y, y) = 0; in these modes it is a group member.
    members = [*values, 0.0] if mode in ("reference_in_group", "rank") else values
    if members:
        mu = sum(members) / len(members)
        sigma = math.sqrt(sum((v - mu) ** 2 for v in members) / len(members))
    else:
        mu = sigma = 0.0
    least = max(min_valid, 2 if mode == "leave_one_out" else 1)
    if n < least or not math.isfinite(sigma) or sigma < std_floor:
        return [0.0] * len(rewards), 0.0, True

    s = sum(values)

    def rank(x: float) -> float:
        below = sum(v < x for v in members)
        equal = sum(v == x for v in members)
        return below + (equal - 1) / 2

    def f(x: float) -> float:
        if mode in ("reference_in_group", "samples_only"):
            return (x - mu) / (sigma + eps)
        if mode == "leave_one_out":
            return x - (s - x) / (n - 1)
        return 2 * rank(x) / n - 1

    advantages = [f(r) if ok else 0.0 for r, ok in zip(rewards, valid, strict=True)]
    reference = -s / n if mode == "leave_one_out" else f(0.0)
    return advantages, reference, False


def reference(groups, mode, eps=EPS, std_floor=EPS, min_valid=2):
    adv, ref, deg, valid = [], [], [], []
    for g in groups:
        a, r, d = reference_group(g, mode, eps, std_floor, min_valid)
        adv += a
        ref += [r] * len(g)
        deg += [d] * len(g)
        valid += [x is not None and math.isfinite(x) for x in g]
    return adv, ref, deg, valid


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-6)


def run(ids, rewards, **kw):
    out = _native.group_advantages(ids, rewards, **kw)
    return out, {
        k: pa.array(out[k]).to_pylist()
        for k in ("advantage", "reference_advantage", "degenerate", "reward_valid")
    }


# ---- strategies ----

# Multiples of 1/1000: a group's σ is then either about 0 or far above std_floor, so float
# rounding cannot flip a group across the degeneracy threshold between the two implementations.
reward = st.one_of(
    st.sampled_from([-1.0, 0.0, 1.0]),
    st.integers(-10_000, 10_000).map(lambda k: k / 1000),
    st.sampled_from([math.nan, math.inf, -math.inf, None]),
)
group = st.one_of(
    st.lists(reward, min_size=1, max_size=10),
    # all-equal groups
    st.tuples(st.sampled_from([-1.0, 0.0, 0.5, 1.0]), st.integers(1, 10)).map(
        lambda t: [t[0]] * t[1]
    ),
)


def ids_for(groups, kind: str) -> pa.Array:
    # Distinct, unsorted ids per group: exercises the hash-set contiguity check.
    keys = [(g * 7919 + 13) % 100_003 for g in range(len(groups))]
    rows = [k for k, g in zip(keys, groups, strict=True) for _ in g]
    if kind == "int64":
        return pa.array(rows, pa.int64())
    return pa.array([f"prompt-{k}" for k in rows], pa.string())


# ---- group_advantages ----


@settings(max_examples=300, deadline=None)
@given(
    groups=st.lists(group, max_size=25),
    mode=st.sampled_from(MODES),
    kind=st.sampled_from(["int64", "string"]),
    min_valid=st.integers(0, 3),
)
def test_matches_reference(groups, mode, kind, min_valid):
    rewards = pa.array([r for g in groups for r in g], pa.float64())
    out, cols = run(ids_for(groups, kind), rewards, mode=mode, min_valid=min_valid)
    adv, ref, deg, valid = reference(groups, mode, min_valid=min_valid)

    assert all(math.isfinite(x) for x in cols["advantage"] + cols["reference_advantage"])
    assert all(close(a, b) for a, b in zip(cols["advantage"], adv, strict=True)), (
        cols["advantage"],
        adv,
    )
    assert all(close(a, b) for a, b in zip(cols["reference_advantage"], ref, strict=True))
    assert cols["degenerate"] == deg
    assert cols["reward_valid"] == valid
    assert out["n_rows"] == len(rewards)
    assert out["n_groups"] == len(groups)
    assert out["n_invalid_rewards"] == valid.count(False)
    n_degenerate = sum(reference_group(g, mode, EPS, EPS, min_valid)[2] for g in groups)
    assert out["n_degenerate_groups"] == n_degenerate


def test_worked_example():
    # Rewards [1, -1, 0, 1] and the reference's 0: values {1, -1, 0, 1, 0}, μ = 0.2, σ² = 0.56.
    _, cols = run(pa.array([7, 7, 7, 7]), pa.array([1.0, -1.0, 0.0, 1.0]))
    d = math.sqrt(0.56) + EPS
    assert all(
        close(a, b)
        for a, b in zip(cols["advantage"], [0.8 / d, -1.2 / d, -0.2 / d, 0.8 / d], strict=True)
    )
    assert all(close(a, -0.2 / d) for a in cols["reference_advantage"])


@pytest.mark.parametrize(
    "ids",
    [
        pa.array([5, 5, 5, 2, 2], pa.int64()),
        pa.array([5, 5, 5, 2, 2], pa.uint64()),
        pa.array([5, 5, 5, 2, 2], pa.int32()),
        pa.array(["b", "b", "b", "a", "a"], pa.string()),
        pa.array(["b", "b", "b", "a", "a"], pa.large_string()),
        pa.array(["a long id past twelve bytes"] * 3 + ["a"] * 2, pa.string_view()),
    ],
    ids=lambda a: str(a.type),
)
def test_id_types(ids):
    rewards = pa.array([1.0, 0.0, -1.0, 0.5, 0.25])
    out, cols = run(ids, rewards)
    adv, ref, _, _ = reference([[1.0, 0.0, -1.0], [0.5, 0.25]], "reference_in_group")
    assert out["n_groups"] == 2
    assert all(close(a, b) for a, b in zip(cols["advantage"], adv, strict=True))
    assert all(close(a, b) for a, b in zip(cols["reference_advantage"], ref, strict=True))


def test_float32_nulls_and_slices():
    groups = [[1.0, None, -1.0], [0.5, float("nan"), 0.25, 1.0]]
    flat = [r for g in groups for r in g]
    ids = pa.array([0, 0, 0, 1, 1, 1, 1])
    for rewards in (pa.array(flat, pa.float32()), pa.array([9.0, *flat], pa.float64()).slice(1)):
        _, cols = run(ids, rewards)
        adv, _, deg, valid = reference(groups, "reference_in_group")
        assert all(close(a, b) for a, b in zip(cols["advantage"], adv, strict=True))
        assert cols["degenerate"] == deg
        assert cols["reward_valid"] == valid


def test_sliced_ids():
    ids = pa.array([3, 1, 1, 2, 2]).slice(1)
    out, _ = run(ids, pa.array([1.0, 0.0, 1.0, -1.0]))
    assert out["n_groups"] == 2


def test_large_input_matches_numpy():
    # Over a million rows the kernel splits the groups over threads.
    g, n_groups = 8, 300_000
    rng = np.random.default_rng(1)
    r = rng.integers(-1, 2, size=g * n_groups).astype(np.float64)
    ids = pa.array(np.repeat(np.arange(n_groups, dtype=np.int64), g))
    out = _native.group_advantages(ids, pa.array(r))
    x = r.reshape(-1, g)
    mu = x.sum(axis=1, keepdims=True) / (g + 1)
    sigma = np.sqrt((((x - mu) ** 2).sum(axis=1, keepdims=True) + mu**2) / (g + 1))
    degenerate = np.repeat((sigma < EPS).ravel(), g)
    want = np.where(sigma < EPS, 0.0, (x - mu) / (sigma + EPS)).ravel()
    got = pa.array(out["advantage"]).to_numpy()
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
    assert (
        pa.array(out["degenerate"]).to_numpy(zero_copy_only=False).tolist() == degenerate.tolist()
    )
    assert out["n_degenerate_groups"] == int(degenerate.sum()) // g


def test_empty():
    out, cols = run(pa.array([], pa.int64()), pa.array([], pa.float64()))
    assert all(v == [] for v in cols.values())
    assert (
        out["n_rows"],
        out["n_groups"],
        out["n_degenerate_groups"],
        out["n_invalid_rewards"],
    ) == (0, 0, 0, 0)


def test_outputs_import_without_copy():
    out = _native.group_advantages(pa.array([1, 1, 2]), pa.array([1.0, 0.0, 2.0]))
    adv = out["advantage"]
    assert len(adv) == 3 and "float64" in repr(adv).lower()
    first, second = pa.array(adv), pa.array(adv)
    assert first.type == pa.float64() and first.null_count == 0
    # Both imports view the same Rust-owned buffer.
    assert first.buffers()[1].address == second.buffers()[1].address
    assert pa.array(out["degenerate"]).type == pa.bool_()
    assert pa.array(out["reward_valid"]).to_pylist() == [True, True, True]


def test_non_contiguous_ids_raise():
    with pytest.raises(ValueError, match="group_id") as e:
        _native.group_advantages(pa.array(["a", "a", "b", "a"]), pa.array([1.0, 2.0, 3.0, 4.0]))
    message = str(e.value)
    assert "sort rows by group_id" in message
    assert "'a'" in message or '"a"' in message
    assert "row 0" in message and "row 3" in message


def test_bad_inputs_raise():
    ids, rewards = pa.array([1, 1]), pa.array([1.0, 2.0])
    with pytest.raises(ValueError, match=r"group_ids.*rewards"):
        _native.group_advantages(ids, pa.array([1.0]))
    with pytest.raises(ValueError, match="group_id is null at row 1"):
        _native.group_advantages(pa.array([1, None]), rewards)
    with pytest.raises(TypeError, match="rewards must be float64 or float32"):
        _native.group_advantages(ids, pa.array([1, 2]))
    with pytest.raises(TypeError, match="group_id must be"):
        _native.group_advantages(pa.array([1.5, 1.5]), rewards)
    with pytest.raises(TypeError, match="combine_chunks"):
        _native.group_advantages(pa.chunked_array([[1, 1]]), rewards)
    with pytest.raises(TypeError, match="rewards must be an Arrow array"):
        _native.group_advantages(ids, [1.0, 2.0])
    with pytest.raises(ValueError, match="mode must be one of"):
        _native.group_advantages(ids, rewards, mode="zscore")
    with pytest.raises(ValueError, match="eps"):
        _native.group_advantages(ids, rewards, eps=-1.0)
    with pytest.raises(ValueError, match="std_floor"):
        _native.group_advantages(ids, rewards, std_floor=math.nan)
    with pytest.raises(ValueError, match="min_valid"):
        _native.group_advantages(ids, rewards, min_valid=-1)


# ---- packing ----


def check_packing(lengths: list[int], bins: list[int], n_bins: int, budget: int) -> None:
    assert len(bins) == len(lengths)
    assert set(bins) == set(range(n_bins))  # bins 0..n_bins, none empty
    loads = [0] * n_bins
    for length, b in zip(lengths, bins, strict=True):
        loads[b] += length
    assert max(loads, default=0) <= budget
    assert n_bins >= -(-sum(lengths) // budget)


@settings(max_examples=200, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 100), max_size=200),
    budget=st.integers(100, 400),
    int32=st.booleans(),
)
def test_pack_bfd_invariants(lengths, budget, int32):
    arr = pa.array(lengths, pa.int32() if int32 else pa.int64())
    bins, n_bins = _native.pack_bfd(arr, budget)
    bins = pa.array(bins)
    assert bins.type == pa.uint32()
    check_packing(lengths, bins.to_pylist(), n_bins, budget)
    again, _ = _native.pack_bfd(arr, budget)
    assert pa.array(again).to_pylist() == bins.to_pylist()


@settings(max_examples=200, deadline=None)
@given(lengths=st.lists(st.integers(1, 120), min_size=1, max_size=60), cap=st.integers(1, 300))
def test_fit_rows_is_a_packing_never_worse_than_right_padding(lengths, cap):
    """The learner's row layout: a valid packing at its width (at most the cap, or the longest
    sequence), no more padded tokens than one row per sequence at the longest, nor than
    best-fit decreasing at the cap."""
    bins, n_rows, width = _native.fit_rows(pa.array(lengths, pa.int64()), cap)
    check_packing(lengths, pa.array(bins).to_pylist(), n_rows, width)
    assert max(lengths) <= width <= max(cap, max(lengths))
    assert n_rows * width <= len(lengths) * max(lengths)
    at_cap = max(cap, max(lengths))
    assert n_rows * width <= _native.pack_bfd(pa.array(lengths, pa.int64()), at_cap)[1] * at_cap


def test_fit_rows_by_hand_and_errors():
    # Five sequences of 60 at a cap of 100: one per row, 60 wide (not 100 wide, 40% padding).
    _, n_rows, width = _native.fit_rows(pa.array([60] * 5, pa.int32()), 100)
    assert (n_rows, width) == (5, 60)
    # 3 + 6 + 2 + 5 + 4 + 1 = 21 tokens: BFD at 10 needs 3 rows; 7 wide keeps 3 rows, 21 tokens.
    _, n_rows, width = _native.fit_rows(pa.array([3, 6, 2, 5, 4, 1]), 10)
    assert (n_rows, width) == (3, 7)
    with pytest.raises(ValueError, match="cap must be positive"):
        _native.fit_rows(pa.array([1]), 0)
    with pytest.raises(ValueError, match=r"lengths\[1\] is null"):
        _native.fit_rows(pa.array([1, None]), 10)


def test_pack_bfd_by_hand():
    bins, n_bins = _native.pack_bfd(pa.array([3, 6, 2, 5, 4, 1]), 10)
    assert (pa.array(bins).to_pylist(), n_bins) == ([1, 0, 1, 1, 0, 2], 3)
    bins, n_bins = _native.pack_bfd(pa.array([], pa.int64()), 10)
    assert (len(bins), n_bins) == (0, 0)


def test_pack_bfd_errors():
    with pytest.raises(ValueError, match=r"lengths\[1\] = 11"):
        _native.pack_bfd(pa.array([1, 11]), 10)
    with pytest.raises(ValueError, match=r"lengths\[0\] = 0"):
        _native.pack_bfd(pa.array([0, 1]), 10)
    with pytest.raises(ValueError, match="budget"):
        _native.pack_bfd(pa.array([1]), 0)
    with pytest.raises(TypeError, match="lengths must be int32 or int64"):
        _native.pack_bfd(pa.array([1.0]), 10)
    with pytest.raises(ValueError, match=r"lengths\[1\] is null"):
        _native.pack_bfd(pa.array([1, None]), 10)


@settings(max_examples=100, deadline=None)
@given(groups=st.lists(st.lists(st.integers(1, 40), min_size=1, max_size=6), max_size=40))
def test_pack_groups_bfd_keeps_groups_together(groups):
    budget = 240
    lengths = [x for g in groups for x in g]
    ids = [f"g{i}" for i, g in enumerate(groups) for _ in g]
    bins, n_bins = _native.pack_groups_bfd(
        pa.array(lengths, pa.int64()), pa.array(ids, pa.string()), budget
    )
    bins = pa.array(bins).to_pylist()
    check_packing(lengths, bins, n_bins, budget)
    start = 0
    for g in groups:
        assert len(set(bins[start : start + len(g)])) == 1
        start += len(g)


def test_pack_groups_bfd_errors():
    with pytest.raises(ValueError, match=r"group_id ('big'|\"big\")"):
        _native.pack_groups_bfd(pa.array([6, 6, 1]), pa.array(["big", "big", "small"]), 10)
    with pytest.raises(ValueError, match="sort rows by group_id"):
        _native.pack_groups_bfd(pa.array([1, 1, 1]), pa.array([1, 2, 1]), 10)
    with pytest.raises(ValueError, match="lengths has 2 items but group_ids has 1"):
        _native.pack_groups_bfd(pa.array([1, 1]), pa.array([1]), 10)
