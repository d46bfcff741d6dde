"""Stage cache, resume and ordering, running the real stages in-process on a tiny config."""

import pyarrow.parquet as pq
import pytest
from stage_runner import run_stage

from grao_pipe.config import load_config
from grao_pipe.errors import StageNotReady
from grao_pipe.pipeline import Pipeline
from grao_pipe.schemas import MANIFEST_NAME


def test_generate_is_cached_and_config_change_makes_new_version(tiny_config):
    cfg = load_config(tiny_config())
    first = run_stage("generate", cfg)
    assert not first.cached and first.manifest.rows == 12 * 4
    again = run_stage("generate", cfg)
    assert again.cached and again.target.dir.path == first.target.dir.path
    changed = run_stage("generate", load_config(tiny_config(), ["generate.temperature=1.0"]))
    assert not changed.cached and changed.target.dir.path != first.target.dir.path
    assert (first.target.dir.path / MANIFEST_NAME).is_file()  # the old version is kept beside


def test_generate_is_deterministic_and_resumes_only_missing_shards(tiny_config):
    cfg = load_config(tiny_config())
    out = run_stage("generate", cfg).target.dir.path
    shards = sorted(out.glob("shard-*.parquet"))
    assert len(shards) == 2
    before = {p.name: pq.read_table(p) for p in shards}
    kept_mtime = shards[0].stat().st_mtime_ns
    # Simulate a crash after the first shard: no manifest, second shard missing.
    (out / MANIFEST_NAME).unlink()
    shards[1].unlink()
    redo = run_stage("generate", cfg)
    assert not redo.cached
    assert shards[0].stat().st_mtime_ns == kept_mtime
    assert pq.read_table(shards[1]).equals(before[shards[1].name])


def test_force_redoes_stage(tiny_config):
    cfg = load_config(tiny_config())
    run_stage("generate", cfg)
    assert not run_stage("generate", cfg, force=True).cached


def test_score_before_generate_is_refused(tiny_config):
    with pytest.raises(StageNotReady, match="run 'grao-pipe generate' first"):
        run_stage("score", load_config(tiny_config()))


def test_score_adds_advantages_and_counts(tiny_config):
    cfg = load_config(tiny_config())
    run_stage("generate", cfg)
    out = run_stage("score", cfg)
    stats = out.manifest.stats
    assert stats.groups == 12 and stats.rows == 48
    table = pq.read_table(next(out.target.dir.path.glob("shard-*.parquet")))
    for col in ("reward", "advantage", "reference_advantage", "degenerate", "keep", "reward_score"):
        assert col in table.column_names
    # Rewards relative to the reference are -1/0/+1 for the arith scorer.
    assert set(table["reward"].to_pylist()) <= {-1.0, 0.0, 1.0}
    # Re-scoring with other advantage settings reuses generate's shards (no new generate dir).
    gens = list((out.target.dir.path.parent.parent / "generate").iterdir())
    # Samples only: the from-scratch model's all-wrong groups have no spread (degenerate).
    rescored = run_stage("score", load_config(tiny_config(), ["score.advantage.mode=samples_only",
                                                             "score.max_degenerate_share=1"]))
    assert not rescored.cached and rescored.target.dir.path != out.target.dir.path
    assert list((out.target.dir.path.parent.parent / "generate").iterdir()) == gens


def test_status_reports_done_missing_and_stale(tiny_config):
    cfg = load_config(tiny_config())
    states = {(s.stage): s.state for s in Pipeline(cfg).status()}
    # eval is listed too: what `grao-pipe eval` of the last round would read (the trained model)
    assert states == {"generate": "missing", "score": "waiting", "train": "waiting", "eval": "waiting"}
    run_stage("generate", cfg)
    run_stage("score", cfg)
    states = {s.stage: s.state for s in Pipeline(cfg).status()}
    assert states["generate"] == "done" and states["score"] == "done" and states["train"] == "missing"
    changed = load_config(tiny_config(), ["score.advantage.eps=0.01"])
    assert {s.stage: s.state for s in Pipeline(changed).status()}["score"] == "stale"
