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


def test_a_shard_is_read_into_arrow_memory(tmp_path):
    """Not into Python bytes: Arrow's reader threads may release the last reference to the
    buffer, and releasing Python-owned memory needs the GIL; at interpreter exit that aborted
    `datasets verify` about once in a hundred runs ("terminate called without an active
    exception", exit 134)."""
    from grao_pipe.storage.shards import open_shard

    path = tmp_path / shard_name(0, 1)
    entry = write_shard(path, _rows(), "generate")
    f = open_shard(path, "generate", entry["sha256"])
    assert isinstance(f.data, pa.Buffer) and f.data.size == path.stat().st_size
    assert f.read()["sample_idx"].to_pylist() == [0, 1]


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
    with pytest.raises(ValueError, match=r"x.parquet: columns \['reference'\] of the generate schema are missing"):
        write_shard(tmp_path / "x.parquet", _rows().drop(["reference"]), "generate")


def _score_columns(n: int) -> pa.Table:
    floats = pa.array([0.5 * i - 1 for i in range(n)], pa.float64())
    lists = pa.array([[-0.5] * (i % 3) if i % 4 else None for i in range(n)], pa.list_(pa.float32()))
    return pa.table({"reward": floats, "reward_valid": pa.array([i % 5 != 0 for i in range(n)]),
                     "advantage": floats, "reference_advantage": floats, "degenerate": pa.array([False] * n),
                     "keep": pa.array([True] * n), "ref_logprobs": lists, "ref_reference_logprobs": lists,
                     "ref_reference_rejected_logprobs": pa.nulls(n, pa.list_(pa.float32())),
                     "reward_arith": floats})


@pytest.mark.parametrize("row_group_size", [None, 3])
def test_a_shard_written_beside_its_base_is_the_shard_written_whole(tmp_path, row_group_size):
    """Score shards copy their generate shard's column chunks (rust/src/splice.rs): the file
    reads back exactly as the one written from the decoded columns (values, schema, metadata,
    row groups), and its checksums hold."""
    from grao_pipe.storage.shards import open_shard

    rows = _rows(7)
    base_path = tmp_path / "generate.parquet"
    if row_group_size is None:
        entry = write_shard(base_path, rows, "generate")
    else:  # a base of several row groups: the new columns follow its row groups
        pq.write_table(rows, base_path, row_group_size=row_group_size, compression="zstd", write_page_checksum=True)
        entry = {"sha256": open_shard(base_path, "generate").sha256}
    base = open_shard(base_path, "generate", entry["sha256"])
    assert base.current
    new, meta = _score_columns(7), {b"grao_pipe.stats": b'{"rows": 7}'}
    spliced = write_shard(tmp_path / "spliced.parquet", new, "score", meta, base=base)
    whole_table = rows
    for name in new.column_names:
        whole_table = whole_table.append_column(name, new[name])
    whole = write_shard(tmp_path / "whole.parquet", whole_table, "score", meta)
    assert spliced["rows"] == whole["rows"] == 7
    a = read_shard(tmp_path / "spliced.parquet", "score", spliced["sha256"])
    b = read_shard(tmp_path / "whole.parquet", "score", whole["sha256"])
    assert a.equals(b, check_metadata=True)
    assert a.schema.field("reward_arith").type == pa.float64()
    meta_a = pq.ParquetFile(tmp_path / "spliced.parquet").metadata
    assert meta_a.num_row_groups == pq.ParquetFile(base_path).metadata.num_row_groups
    meta_b = pq.ParquetFile(tmp_path / "whole.parquet").metadata
    assert meta_a.created_by == meta_b.created_by
    assert meta_a.metadata == meta_b.metadata  # key-value metadata, the Arrow schema included
    assert meta_a.schema.equals(meta_b.schema)
    # Every page still carries its checksum: flip a byte of a copied page and reading fails.
    data = bytearray((tmp_path / "spliced.parquet").read_bytes())
    group = meta_a.row_group(0)
    (col,) = [c for c in map(group.column, range(group.num_columns)) if c.path_in_schema == "response"]
    data[col.data_page_offset + col.total_compressed_size - 2] ^= 0xFF
    (tmp_path / "flipped.parquet").write_bytes(bytes(data))
    with pytest.raises(DataError, match="not a readable Parquet shard"):
        read_shard(tmp_path / "flipped.parquet", "score")


def test_a_base_of_an_older_contract_is_migrated_not_copied(tmp_path):
    from grao_pipe.storage.shards import open_shard

    v1 = _rows(3).drop(["reference_rejected", "reference_rejected_token_ids"])
    v1 = v1.add_column(6, "rejected", pa.array(["no", None, None]))
    pq.write_table(v1.replace_schema_metadata({META_VERSION: b"1", b"grao_pipe.stage": b"generate"}),
                   tmp_path / "old.parquet")
    base = open_shard(tmp_path / "old.parquet", "generate")
    assert not base.current
    entry = write_shard(tmp_path / "s.parquet", _score_columns(3), "score", base=base)
    table = read_shard(tmp_path / "s.parquet", "score", entry["sha256"])
    assert "rejected" not in table.column_names
    assert table["reference_rejected"].to_pylist() == ["no", None, None]
    assert table["reward_arith"].to_pylist() == [-1.0, -0.5, 0.0]


def test_a_base_of_other_rows_is_refused(tmp_path):
    from grao_pipe.storage.shards import open_shard

    write_shard(tmp_path / "g.parquet", _rows(4), "generate")
    with pytest.raises(ValueError, match="4 rows, 3 written beside it"):
        write_shard(tmp_path / "s.parquet", _score_columns(3), "score", base=open_shard(tmp_path / "g.parquet", "generate"))
    assert not list(tmp_path.glob("s.parquet")) and not list(tmp_path.glob(".tmp-*"))


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
