"""The Polars reference and the Rust kernel agree on every mode (the Polars one is the readable
spec; the plain-Python comparison of the kernel is in test_native.py)."""

import polars as pl
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from grao_pipe import _native, advantages
from grao_pipe.config import AdvantageConfig

MODES = _native.ADVANTAGE_MODES  # the config's choices too (test_native_schema.py)
groups = st.lists(st.lists(st.one_of(st.sampled_from([-1.0, 0.0, 1.0]), st.none(), st.just(float("nan"))),
                           min_size=1, max_size=9), min_size=1, max_size=12)


@settings(max_examples=60, deadline=None)
@given(groups, st.sampled_from(MODES))
def test_polars_reference_matches_kernel(gs, mode):
    ids = [f"g{i}" for i, g in enumerate(gs) for _ in g]
    rewards = [r for g in gs for r in g]
    cfg = AdvantageConfig(mode=mode)
    rust = advantages.compute(pa.array(ids), pa.array(rewards, pa.float64()), cfg)
    df = pl.DataFrame({"group_id": ids, "reward": pl.Series(rewards, dtype=pl.Float64)}, strict=False)
    ref = advantages.polars_reference(df, cfg)
    assert ref["advantage"].to_list() == pytest.approx(rust.advantage.to_pylist(), abs=1e-6)
    assert ref["reference_advantage"].to_list() == pytest.approx(rust.reference_advantage.to_pylist(), abs=1e-6)
    assert ref["degenerate"].to_list() == rust.degenerate.to_pylist()
