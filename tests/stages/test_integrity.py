"""Everything read back is checked against what was committed (issue: nothing trusted
unchecked): the learner's Arrow cache, trained exports, manifests against their directories."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from stage_runner import run_stage

from grao_pipe.config import load_config
from grao_pipe.learner.data import GroupStore, cache_file, prepare_cache


@pytest.fixture
def scored(tiny_config):
    cfg = load_config(tiny_config())
    run_stage("generate", cfg)
    out = run_stage("score", cfg)
    return [(out.target.dir.path / s.name, s.sha256) for s in out.manifest.shards]


def _negate_advantages(ipc):
    table = pa.ipc.open_file(pa.memory_map(str(ipc))).read_all()
    i = table.column_names.index("advantage")
    table = table.set_column(i, "advantage", pc.negate(table["advantage"]))
    tmp = ipc.with_name("negated.arrow")
    with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as w:
        w.write_table(table)
    tmp.replace(ipc)


def _expected_advantages(shards):
    return [r["advantage"] for p, _ in shards for r in pq.read_table(p).filter(pc.field("keep")).to_pylist()]


@pytest.mark.parametrize("damage", ["negated", "empty", "garbage", "truncated"])
def test_a_damaged_learner_cache_is_rebuilt_from_the_score_shards(scored, tmp_path, damage):
    """A cache file rewritten (negated advantages), emptied by a power loss, overwritten or cut
    short is found by its seal and rebuilt: the learner trains on what score committed."""
    groups = prepare_cache(scored, tmp_path)
    ipc = cache_file(tmp_path, 0, scored[0][1])
    if damage == "negated":
        _negate_advantages(ipc)
    elif damage == "empty":
        ipc.write_bytes(b"")
    elif damage == "garbage":
        ipc.write_bytes(b"ARROW1" + b"\x00" * 100)
    else:
        ipc.write_bytes(ipc.read_bytes()[: ipc.stat().st_size // 2])
    assert prepare_cache(scored, tmp_path) == groups
    store = GroupStore(scored, tmp_path)
    got = [a for k in range(len(store)) for a in store.group(k).advantages]
    assert got == _expected_advantages(scored)


def test_the_learner_rebuilds_a_cache_file_that_lost_its_seal(scored, tmp_path):
    """Without the train stage's preflight (a learner started by hand), a cache file whose size
    differs from its seal, or which has none, is rebuilt rather than memory-mapped."""
    prepare_cache(scored, tmp_path)
    ipc = cache_file(tmp_path, 0, scored[0][1])
    ipc.write_bytes(b"")
    store = GroupStore(scored, tmp_path)
    assert [a for k in range(len(store)) for a in store.group(k).advantages] == _expected_advantages(scored)


@pytest.fixture
def trained(tiny_config):
    cfg = load_config(tiny_config())
    for stage in ("generate", "score", "train"):
        run_stage(stage, cfg)
    return cfg


def test_a_poisoned_export_is_refused_before_a_round_uses_it(trained):
    """model.safetensors changed after round 1's manifest: round 2 must not sample from it, and
    ``datasets verify`` reports it (it skipped entries named ``model``)."""
    from grao_pipe.errors import DataError
    from grao_pipe.pipeline import Pipeline

    train_dir = Pipeline(trained).target("train", 1).dir
    assert train_dir.verify() == []
    assert (Pipeline(trained).policy(2).local_dir() / "config.json").is_file()
    weights = train_dir.path / "model" / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-8:] = b"\x7f" * 8  # the last weights: still a loadable file, other numbers
    weights.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"model: its files do not hash to the digest its manifest records.*--force"):
        Pipeline(trained).policy(2).local_dir()
    assert any("model" in p and "digest" in p for p in train_dir.verify())
    (train_dir.path / "model" / "config.json").write_text("{")
    with pytest.raises(DataError, match=r"model"):
        Pipeline(trained).policy(2).local_dir()
