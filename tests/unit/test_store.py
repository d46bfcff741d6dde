import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from grao_pipe.errors import DataError
from grao_pipe.manifests import GenerateManifest, GenerateStats, ShardEntry
from grao_pipe.schemas import GENERATE_SCHEMA, META_VERSION, MIGRATIONS, SCHEMA_VERSION, shard_name
from grao_pipe.storage import Workdir
from grao_pipe.storage.shards import clean_temporaries, read_shard, shard_is_committed, write_shard


def _rows(n=2):
    row = {"group_id": "g", "sample_idx": 0, "prompt_idx": 0, "prompt": "1+1=", "prompt_messages": None,
           "reference": "2", "reference_rejected": None, "reference_rejected_token_ids": None, "response": "2", "prompt_token_ids": [1, 2],
           "response_token_ids": [3], "reference_token_ids": [3, 0], "behaviour_logprobs": [-0.1],
           "finish_reason": "stop", "temperature": 0.7, "top_p": 1.0, "max_new_tokens": 4, "seed": 1,
           "backend": "hf", "policy_digest": "abc"}
    return pa.Table.from_pylist([{**row, "sample_idx": i} for i in range(n)], schema=GENERATE_SCHEMA)


def test_shard_roundtrip_carries_schema_version(tmp_path):
    path = tmp_path / shard_name(0, 1)
    entry = write_shard(path, _rows(), "generate")
    assert entry["rows"] == 2 and len(entry["sha256"]) == 64
    table = read_shard(path, "generate", entry["sha256"])
    assert table.schema.metadata[META_VERSION] == str(SCHEMA_VERSION).encode()
    assert table["sample_idx"].to_pylist() == [0, 1]
    assert not list(tmp_path.glob(".tmp-*"))


def test_checksum_mismatch_and_truncation_are_detected(tmp_path):
    path = tmp_path / shard_name(0, 1)
    entry = write_shard(path, _rows(), "generate")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="checksum mismatch"):
        read_shard(path, "generate", entry["sha256"])
    with pytest.raises(DataError, match="not a readable Parquet shard"):
        read_shard(path, "generate")
    assert not shard_is_committed(path, "generate")


@pytest.mark.parametrize(("version", "message"), [
    (b"0", "older than 2 and no migration exists"),
    (b"7", "newer than this grao-pipe's"),
    (b"v1", "no grao-pipe schema version"),
])
def test_unknown_schema_versions_are_refused_with_what_to_do(tmp_path, version, message):
    path = tmp_path / "other.parquet"
    table = _rows().replace_schema_metadata({META_VERSION: version, b"grao_pipe.stage": b"generate"})
    pq.write_table(table, path)
    with pytest.raises(DataError, match=message):
        read_shard(path, "generate")


def test_v1_shards_are_migrated_on_read(tmp_path):
    """A v1 dataset (``rejected``) reads as v2 (``reference_rejected`` + its token ids), checksum intact."""
    v1 = _rows(2).drop(["reference_rejected", "reference_rejected_token_ids"])
    v1 = v1.add_column(6, "rejected", pa.array(["no", None]))
    v1 = v1.replace_schema_metadata({META_VERSION: b"1", b"grao_pipe.stage": b"generate"})
    path = tmp_path / "old.parquet"
    pq.write_table(v1, path)
    table = read_shard(path, "generate")
    assert "rejected" not in table.column_names
    assert table["reference_rejected"].to_pylist() == ["no", None]
    assert table["reference_rejected_token_ids"].to_pylist() == [None, None]


def test_the_migration_chain_runs_every_step(tmp_path, monkeypatch):
    """A release with contract v3 reads a v2 dataset through MIGRATIONS[2]."""
    import pyarrow.compute as pc

    import grao_pipe.storage.shards

    path = tmp_path / shard_name(0, 1)
    entry = write_shard(path, _rows(3), "generate")  # written as v2
    monkeypatch.setattr(grao_pipe.storage.shards, "SCHEMA_VERSION", 3)

    def v2_to_v3(table: pa.Table, stage: str) -> pa.Table:
        return table.append_column("response_chars", pc.utf8_length(table["response"]))

    with pytest.raises(DataError, match="no migration exists"):
        read_shard(path, "generate", entry["sha256"])
    monkeypatch.setitem(MIGRATIONS, 2, v2_to_v3)
    table = read_shard(path, "generate", entry["sha256"])
    assert table["response_chars"].to_pylist() == [1, 1, 1]
    assert table["sample_idx"].to_pylist() == [0, 1, 2]


def test_missing_column_is_rejected_on_write(tmp_path):
    with pytest.raises((KeyError, pa.ArrowInvalid)):
        write_shard(tmp_path / "x.parquet", _rows().drop(["reference"]), "generate")


def test_manifest_written_last_and_read_back(tmp_path):
    d = Workdir(tmp_path).stage_dir("generate", "k" * 64)
    assert d.manifest() is None
    m = d.commit(GenerateManifest(key="k" * 64, config={"a": 1}, inputs={"x": "y"},
                                  shards=[ShardEntry(name="s", rows=3, sha256="0" * 64)], stats=GenerateStats()))
    back = d.manifest()
    assert back is not None and back.rows == 3 and back.fingerprint == m.fingerprint
    assert (d.path / "_SUCCESS").is_file()
    (d.path / "_manifest.json").write_text("{not json")
    with pytest.raises(DataError, match="malformed manifest"):
        d.manifest()


def test_a_legacy_manifest_is_read_and_renamed(tmp_path):
    d = Workdir(tmp_path).stage_dir("generate", "k" * 64)
    d.path.mkdir(parents=True)
    legacy = GenerateManifest(key="k" * 64, config={}, inputs={}, shards=[], stats=GenerateStats())
    (d.path / "manifest.json").write_bytes(legacy.to_json())
    assert d.manifest() == legacy
    assert d.prepare(force=False) == legacy  # opening it migrates the sidecars' names
    assert sorted(p.name for p in d.path.iterdir()) == ["_SUCCESS", "_manifest.json"]


@pytest.mark.parametrize(("edit", "message"), [
    (lambda m: m["shards"][0].pop("sha256"), r"shards\.0\.sha256: Field required"),
    (lambda m: m.update(rows=99), "rows is 99 but the shards hold 3"),
    (lambda m: m.update(stage="nope"), "does not match any of the expected tags"),
])
def test_malformed_manifests_name_the_key(tmp_path, edit, message):
    import json

    d = Workdir(tmp_path).stage_dir("generate", "k" * 64)
    d.commit(GenerateManifest(key="k" * 64, config={}, inputs={}, shards=[ShardEntry(name="s", rows=3, sha256="0" * 64)],
                              stats=GenerateStats()))
    data = json.loads((d.path / "_manifest.json").read_text())
    edit(data)
    (d.path / "_manifest.json").write_text(json.dumps(data))
    with pytest.raises(DataError, match=message):
        d.manifest()


def test_clean_temporaries_keeps_committed_and_live_writers(tmp_path):
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    write_shard(tmp_path / "a.parquet", _rows(), "generate")
    (tmp_path / f".tmp-b.parquet.{dead.stdout.strip()}").write_bytes(b"partial, its writer died")
    (tmp_path / f".tmp-c.parquet.{os.getpid()}").write_bytes(b"being written right now")
    clean_temporaries(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".tmp-c.parquet.{os.getpid()}", "a.parquet"]
