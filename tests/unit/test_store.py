import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from grao_pipe.errors import DataError
from grao_pipe.schemas import GENERATE_SCHEMA, META_VERSION, MIGRATIONS, SCHEMA_VERSION, shard_name
from grao_pipe.store import (
    clean_temporaries,
    read_manifest,
    read_shard,
    shard_is_committed,
    write_manifest,
    write_shard,
)


def _rows(n=2):
    row = {"group_id": "g", "sample_idx": 0, "prompt_idx": 0, "prompt": "1+1=", "prompt_messages": None,
           "reference": "2", "rejected": None, "response": "2", "prompt_token_ids": [1, 2],
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
    (b"0", "older than 1 and no migration exists"),
    (b"7", "newer than this grao-pipe's"),
    (b"v1", "no grao-pipe schema version"),
])
def test_unknown_schema_versions_are_refused_with_what_to_do(tmp_path, version, message):
    path = tmp_path / "other.parquet"
    table = _rows().replace_schema_metadata({META_VERSION: version, b"grao_pipe.stage": b"generate"})
    pq.write_table(table, path)
    with pytest.raises(DataError, match=message):
        read_shard(path, "generate")


def test_older_shards_are_migrated_on_read(tmp_path, monkeypatch):
    """A release with contract v2 reads a v1 dataset through MIGRATIONS[1], checksum intact."""
    import pyarrow.compute as pc

    import grao_pipe.store

    path = tmp_path / shard_name(0, 1)
    entry = write_shard(path, _rows(3), "generate")  # written as v1
    monkeypatch.setattr(grao_pipe.store, "SCHEMA_VERSION", 2)

    def v1_to_v2(table: pa.Table, stage: str) -> pa.Table:
        return table.append_column("response_chars", pc.utf8_length(table["response"]))

    with pytest.raises(DataError, match="no migration exists"):
        read_shard(path, "generate", entry["sha256"])
    monkeypatch.setitem(MIGRATIONS, 1, v1_to_v2)
    table = read_shard(path, "generate", entry["sha256"])
    assert table["response_chars"].to_pylist() == [1, 1, 1]
    assert table["sample_idx"].to_pylist() == [0, 1, 2]


def test_missing_column_is_rejected_on_write(tmp_path):
    with pytest.raises((KeyError, pa.ArrowInvalid)):
        write_shard(tmp_path / "x.parquet", _rows().drop(["reference"]), "generate")


def test_manifest_written_last_and_read_back(tmp_path):
    assert read_manifest(tmp_path) is None
    m = write_manifest(tmp_path, stage="generate", key="k" * 64, config={"a": 1}, inputs={"x": "y"},
                       shards=[{"name": "s", "rows": 3, "sha256": "0" * 64}], stats={})
    back = read_manifest(tmp_path)
    assert back is not None and back.data["rows"] == 3 and back.fingerprint == m.fingerprint
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(DataError, match="malformed manifest"):
        read_manifest(tmp_path)


def test_clean_temporaries_keeps_committed_and_live_writers(tmp_path):
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    write_shard(tmp_path / "a.parquet", _rows(), "generate")
    (tmp_path / f".tmp-b.parquet.{dead.stdout.strip()}").write_bytes(b"partial, its writer died")
    (tmp_path / f".tmp-c.parquet.{os.getpid()}").write_bytes(b"being written right now")
    clean_temporaries(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".tmp-c.parquet.{os.getpid()}", "a.parquet"]
