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
def trained(tiny_config, tmp_path, monkeypatch):
    system_tmp = tmp_path / "system-tmp"
    system_tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(system_tmp))  # what torchrun would use
    cfg = load_config(tiny_config())
    for stage in ("generate", "score", "train"):
        run_stage(stage, cfg)
    # torchrun's logs and temporaries went under the stage directory, and were removed with it.
    assert list(system_tmp.iterdir()) == []
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


def _generated(cfg):
    from grao_pipe.pipeline import Pipeline

    run_stage("generate", cfg)
    return Pipeline(cfg).target("generate", 1).dir.path


def _edit(path, fn):
    import json

    m = json.loads(path.read_text())
    fn(m)
    path.write_text(json.dumps(m))


@pytest.mark.parametrize("edit, message", [
    (lambda m: (m["shards"].append(m["shards"][0]), m.update(rows=m["rows"] + m["shards"][0]["rows"])),
     r"listed twice"),
    (lambda m: (m.update(rows=m["rows"] - m["shards"][1]["rows"]), m["shards"].pop(1)),
     r"shard-00001-of-00002.parquet.*not listed in its manifest"),
    (lambda m: m.update(stage="train", stats={}), r"says stage 'train'.*holds generate"),
    (lambda m: m.update(key="0" * 64), r"says key 000000000000.*--force"),
])
def test_a_manifest_that_disagrees_with_its_directory_is_refused(tiny_config, edit, message):
    """Rows listed twice, a shard on disk but not in the manifest (train would see half the
    data), another stage's or another key's manifest: refused when read, never used."""
    from grao_pipe.errors import DataError

    cfg = load_config(tiny_config())
    d = _generated(cfg)
    _edit(d / "_manifest.json", edit)
    with pytest.raises(DataError, match=message):
        run_stage("score", cfg)
    with pytest.raises(DataError, match=message):
        run_stage("generate", cfg)  # the cached output is checked too, not returned as done


def test_a_resumed_run_adopts_neither_a_foreign_nor_a_page_corrupt_shard(tiny_config):
    """A crash before the manifest: the next run lists what was committed. A shard copied in
    from another version (another key), or one whose pages fail their checksums, is written
    again, not blessed into the new manifest."""
    import shutil

    from grao_pipe.storage.shards import file_sha256

    cfg = load_config(tiny_config())
    other = load_config(tiny_config(generate={"seed": 7}))
    d, foreign = _generated(cfg), _generated(other)
    good = {p.name: file_sha256(p) for p in d.glob("shard-*.parquet")}
    for name in ("_manifest.json", "_SUCCESS"):
        (d / name).unlink()
    shutil.copy(foreign / "shard-00000-of-00002.parquet", d / "shard-00000-of-00002.parquet")
    torn = d / "shard-00001-of-00002.parquet"
    raw = bytearray(torn.read_bytes())
    raw[200:260] = b"\x00" * 60  # a data page, the footer intact
    torn.write_bytes(bytes(raw))
    out = run_stage("generate", cfg)
    assert {s.name: s.sha256 for s in out.manifest.shards} == good
    assert out.target.dir.verify() == []


def _scorer_module(path, body):
    path.write_text(f"def score(prompt, response, reference):\n    return {body}\n")


def test_rewards_are_keyed_by_the_scorer_code(tiny_config, tmp_path, monkeypatch):
    """Editing a function scorer's module changes its rewards' key (and score's, train's): the
    old rewards are never reused for new code. ``version`` changes it too."""
    import importlib
    import sys

    monkeypatch.syspath_prepend(str(tmp_path))
    _scorer_module(tmp_path / "myscore.py", "1.0 if len(response) % 2 else -1.0")
    scorer = {"kind": "function", "name": "mine", "function": "myscore:score"}
    cfg = load_config(tiny_config(score={"scorers": [scorer]}))
    run_stage("generate", cfg)
    first = run_stage("score", cfg)
    _scorer_module(tmp_path / "myscore.py", "-1.0 if len(response) % 2 else 1.0")
    sys.modules.pop("myscore", None)
    importlib.invalidate_caches()
    second = run_stage("score", cfg)
    assert second.target.key != first.target.key
    assert second.manifest.stats.scorer_shards_computed == {"mine": 2}
    assert second.manifest.stats.reward_sum == pytest.approx(-first.manifest.stats.reward_sum)
    bumped = load_config(tiny_config(score={"scorers": [{**scorer, "version": "2"}]}))
    assert run_stage("score", bumped).target.key != second.target.key


def test_score_force_recomputes_rewards_and_a_corrupt_reward_file_is_recomputed(tiny_config):
    import counting_scorer

    from grao_pipe.pipeline import Pipeline

    counting = {"kind": "function", "name": "count", "function": "counting_scorer:score"}
    cfg = load_config(tiny_config(score={"scorers": [counting]}))
    run_stage("generate", cfg)
    counting_scorer.CALLS["n"] = 0
    run_stage("score", cfg)
    assert counting_scorer.CALLS["n"] == 48
    forced = run_stage("score", cfg, force=True)
    assert counting_scorer.CALLS["n"] == 96 and forced.manifest.stats.scorer_shards_computed == {"count": 2}
    # A raw-reward file whose pages are damaged (footer intact): recomputed, not a dead end.
    rewards = Pipeline(cfg).workdir.root / "rewards"
    (f, *_) = sorted(rewards.glob("*/*/shard-*.parquet"))
    raw = bytearray(f.read_bytes())
    raw[4:40] = b"\x00" * 36
    f.write_bytes(bytes(raw))
    out = run_stage("score", load_config(tiny_config(score={"scorers": [counting], "advantage": {"mode": "rank"}})))
    assert out.manifest.stats.scorer_shards_computed == {"count": 1}


def test_token_ids_beyond_the_vocabulary_are_a_data_error_before_the_learner(scored, tmp_path):
    from grao_pipe.errors import DataError
    from grao_pipe.storage.shards import write_shard

    path, _ = scored[0]
    table = pq.read_table(path)
    ids = table["response_token_ids"].to_pylist()
    ids[0] = [5, 1_000_000]
    table = table.set_column(table.column_names.index("response_token_ids"), "response_token_ids",
                             pa.array(ids, table.schema.field("response_token_ids").type))
    bad = tmp_path / "shard-00000-of-00001.parquet"
    entry = write_shard(bad, table.replace_schema_metadata(None), "score")
    with pytest.raises(DataError, match=r"response_token_ids holds token id 1000000, outside the policy's vocabulary of 512"):
        prepare_cache([(bad, entry["sha256"])], tmp_path / "cache", vocab_size=512)


def test_status_and_datasets_list_show_one_corrupt_output_and_go_on(tiny_config):
    from grao_pipe.datasets import manifests
    from grao_pipe.errors import DataError
    from grao_pipe.pipeline import Pipeline

    cfg = load_config(tiny_config())
    d = _generated(cfg)
    (d / "_manifest.json").write_text("{")
    rows = Pipeline(cfg).status()
    assert [(r.stage, r.state) for r in rows[:2]] == [("generate", "corrupt"), ("score", "corrupt")]
    assert "malformed manifest" in rows[0].detail and len(rows) == 4  # every stage of the round and eval, no exception
    listed = manifests(Pipeline(cfg).workdir)
    assert len(listed) == 1 and isinstance(listed[0][1], DataError)
