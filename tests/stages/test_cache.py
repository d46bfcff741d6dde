"""Stage cache, resume and ordering, running the real stages in-process on a tiny config."""

import pyarrow.parquet as pq
import pytest

from grao_pipe.config import load_config
from grao_pipe.errors import StageNotReady
from grao_pipe.schemas import MANIFEST_NAME
from grao_pipe.stages import generate, score
from grao_pipe.stages.status import status


def test_generate_is_cached_and_config_change_makes_new_version(tiny_config):
    cfg = load_config(tiny_config())
    first = generate.run(cfg)
    assert not first.cached and first.manifest.data["rows"] == 12 * 4
    again = generate.run(cfg)
    assert again.cached and again.ref.directory == first.ref.directory
    changed = generate.run(load_config(tiny_config(), ["generate.temperature=1.0"]))
    assert not changed.cached and changed.ref.directory != first.ref.directory
    assert (first.ref.directory / MANIFEST_NAME).is_file()  # the old version is kept beside


def test_generate_is_deterministic_and_resumes_only_missing_shards(tiny_config):
    cfg = load_config(tiny_config())
    out = generate.run(cfg).ref.directory
    shards = sorted(out.glob("shard-*.parquet"))
    assert len(shards) == 2
    before = {p.name: pq.read_table(p) for p in shards}
    kept_mtime = shards[0].stat().st_mtime_ns
    # Simulate a crash after the first shard: no manifest, second shard missing.
    (out / MANIFEST_NAME).unlink()
    shards[1].unlink()
    redo = generate.run(cfg)
    assert not redo.cached
    assert shards[0].stat().st_mtime_ns == kept_mtime
    assert pq.read_table(shards[1]).equals(before[shards[1].name])


def test_force_redoes_stage(tiny_config):
    cfg = load_config(tiny_config())
    generate.run(cfg)
    assert not generate.run(cfg, force=True).cached


def test_score_before_generate_is_refused(tiny_config):
    with pytest.raises(StageNotReady, match="run 'grao-pipe generate' first"):
        score.run(load_config(tiny_config()))


def test_score_adds_advantages_and_counts(tiny_config):
    cfg = load_config(tiny_config())
    generate.run(cfg)
    out = score.run(cfg)
    stats = out.manifest.data["stats"]
    assert stats["groups"] == 12 and stats["rows"] == 48
    table = pq.read_table(next(out.ref.directory.glob("shard-*.parquet")))
    for col in ("reward", "advantage", "reference_advantage", "degenerate", "keep", "reward_score"):
        assert col in table.column_names
    # Rewards relative to the reference are -1/0/+1 for the arith scorer.
    assert set(table["reward"].to_pylist()) <= {-1.0, 0.0, 1.0}
    # Re-scoring with other advantage settings reuses generate's shards (no new generate dir).
    gens = list((out.ref.directory.parent.parent / "generate").iterdir())
    rescored = score.run(load_config(tiny_config(), ["score.advantage.mode=samples_only"]))
    assert not rescored.cached and rescored.ref.directory != out.ref.directory
    assert list((out.ref.directory.parent.parent / "generate").iterdir()) == gens


def test_status_reports_done_missing_and_stale(tiny_config):
    cfg = load_config(tiny_config())
    states = {(s.stage): s.state for s in status(cfg)}
    assert states == {"generate": "missing", "score": "waiting", "train": "waiting"}
    generate.run(cfg)
    score.run(cfg)
    states = {s.stage: s.state for s in status(cfg)}
    assert states["generate"] == "done" and states["score"] == "done" and states["train"] == "missing"
    changed = load_config(tiny_config(), ["score.advantage.eps=0.01"])
    assert {s.stage: s.state for s in status(changed)}["score"] == "stale"
