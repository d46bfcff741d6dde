"""Shard files: Parquet with the data contract's schema, written atomically, read with checks.

A shard is written to a temporary name and renamed into place, so it appears complete or not
at all. Reading checks the checksum while reading (one pass over the bytes), the stage and the
schema version, and upgrades older versions (``schemas.MIGRATIONS``). This module knows files
only; where they live (a workdir, its remote mirror) is ``grao_pipe.storage.workdir``'s job.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import os
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from grao_pipe.errors import FULL_ERRNOS, DataError, storage_full
from grao_pipe.faults import kill_point
from grao_pipe.schemas import (
    META_STAGE,
    META_VERSION,
    MIGRATIONS,
    SCHEMA_VERSION,
    SCHEMAS,
    TMP_PREFIX,
    tmp_name,
)


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def content_sha256(path: Path | str) -> str:
    """sha256 of an input file (prompt set, model weights), hashed once per process for a given
    (path, size, mtime): stage keys are computed several times per run and must not re-read
    gigabytes each time. Shard checksums use ``file_sha256``, which always reads."""
    p = Path(path).resolve()
    st = p.stat()
    return _content_sha256(str(p), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=4096)
def _content_sha256(path: str, size: int, mtime_ns: int) -> str:
    return file_sha256(Path(path))


@contextlib.contextmanager
def _committing(path: Path) -> Iterator[Path]:
    """Yield a temporary name beside ``path``; rename it into place only if the body (which
    writes and fsyncs it) succeeds. On failure the temporary is removed, so nothing partial is
    ever visible, and a full disk becomes a StorageFull error that names the file."""
    tmp = path.with_name(tmp_name(path.name))
    try:
        yield tmp
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and e.errno in FULL_ERRNOS:
            raise storage_full(e, str(path)) from None
        raise
    os.replace(tmp, path)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with _committing(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


_WRITE_OPTIONS: dict[str, Any] = {
    # Page checksums: a torn or bit-flipped page is an error on read, never wrong numbers.
    # No dictionary encoding: token-id and log-prob lists do not repeat, and trying it made
    # writing ~3x slower for files ~5% smaller (zstd already takes the repeated strings).
    "compression": "zstd", "write_page_checksum": True, "use_dictionary": False,
}


def write_shard(path: Path, table: pa.Table, stage: str, meta: Mapping[bytes, bytes] | None = None,
                durable: bool = True, base: ShardFile | None = None) -> dict[str, Any]:
    """Validate ``table`` against the stage schema, write it atomically, return its manifest entry
    (name, rows, sha256 of the bytes written). ``durable``: fsync before the rename (shards a
    manifest will list); a cache that is re-derivable skips it. ``base``: a shard whose columns
    come first, row for row (a score shard is its generate shard plus new columns); if it is in
    the current contract its column chunks are copied as encoded, not decoded and re-encoded."""
    schema = SCHEMAS[stage]
    if meta:
        schema = schema.with_metadata({**(schema.metadata or {}), **meta})
    if base is not None and (not base.current or base.num_rows == 0):
        table = _beside(path, base.read(), table)  # an older contract (or no rows): write it whole
        base = None
    given = ([] if base is None else base.parquet.schema_arrow.names) + table.column_names
    extra = [f for f in table.schema if f.name not in schema.names]
    if missing := [n for n in schema.names if n not in given]:
        raise ValueError(f"{path.name}: columns {missing} of the {stage} schema are missing")
    full = pa.schema(list(schema) + extra, metadata=schema.metadata)
    if base is not None:
        with _committing(path) as tmp:
            sha = _splice(base, table, full, tmp, durable)
            kill_point("shard.spliced")  # the spliced temporary written whole, not yet renamed
        return {"name": path.name, "rows": base.num_rows, "sha256": sha}
    table = table.select(full.names).cast(full)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, **_WRITE_OPTIONS)
    data = sink.getvalue()
    with _committing(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        if durable:
            f.flush()
            os.fsync(f.fileno())
    return {"name": path.name, "rows": table.num_rows, "sha256": hashlib.sha256(data).hexdigest()}


def _beside(path: Path, left: pa.Table, right: pa.Table) -> pa.Table:
    if left.num_rows != right.num_rows:
        raise ValueError(f"{path.name}: {right.num_rows} rows written beside a base of {left.num_rows}")
    for name in right.column_names:
        left = left.append_column(right.schema.field(name), right[name])
    return left


def _splice(base: ShardFile, table: pa.Table, full: pa.Schema, out: Path, durable: bool) -> str:
    """Write to ``out`` the file ``write_shard`` would write for ``base``'s columns beside
    ``table``'s, copying ``base``'s column chunks as encoded (rust/src/splice.rs): the new
    columns are encoded as ``write_shard`` encodes them, in the same row groups, and the footer
    carries the metadata (Arrow schema included) pyarrow writes for ``full``. Returns the
    file's sha256, computed as it is written."""
    from grao_pipe import _native

    n_base = len(base.parquet.schema_arrow)
    if _fields(pa.schema(list(full)[:n_base])) != _fields(base.parquet.schema_arrow):
        raise ValueError(f"{base.path}: its columns are not the first columns of the shard written beside it")
    new = pa.schema(list(full)[n_base:])
    if table.num_rows != base.num_rows:
        raise ValueError(f"{base.path}: {base.num_rows} rows, {table.num_rows} written beside it")
    table = table.select(new.names).cast(new)
    sink = pa.BufferOutputStream()
    with pq.ParquetWriter(sink, new, **_WRITE_OPTIONS) as w:
        start = 0
        for i in range(base.parquet.metadata.num_row_groups):  # the base's row groups, one by one
            n = base.parquet.metadata.row_group(i).num_rows
            w.write_table(table.slice(start, n), row_group_size=max(n, 1))
            start += n
    right = sink.getvalue()
    # The footer pyarrow writes for ``full``: its metadata, then the Arrow schema (IPC, base64),
    # and the writer's name (the one that encoded every page).
    kv = [(k.decode(), v.decode()) for k, v in (full.metadata or {}).items()]
    kv.append(("ARROW:schema", base64.b64encode(full.serialize().to_pybytes()).decode()))
    created_by = pq.read_metadata(pa.BufferReader(right)).created_by
    return _native.splice_parquet(base.data, right, kv, str(out), created_by, durable)


@dataclass(frozen=True)
class ShardFile:
    """A shard's bytes, read once and checked against the checksum its manifest lists; its
    columns are decoded on demand (``read``), and a writer can copy them as encoded
    (``write_shard(..., base=)``)."""

    path: Path
    data: pa.Buffer
    sha256: str
    stage: str

    @functools.cached_property
    def parquet(self) -> pq.ParquetFile:
        try:
            # ParquetFile, not read_table: no dataset machinery (and its pandas import) per shard.
            return pq.ParquetFile(pa.BufferReader(self.data), page_checksum_verification=True)
        except (OSError, pa.ArrowException) as e:
            raise DataError(f"{self.path}: not a readable Parquet shard ({e}); re-run the stage with --force") from None

    @functools.cached_property
    def version(self) -> int:
        meta = self.parquet.schema_arrow.metadata or {}
        version = _schema_version(self.path, meta.get(META_VERSION))
        if meta.get(META_STAGE) != self.stage.encode():
            raise DataError(f"{self.path}: written by stage {meta.get(META_STAGE)!r}, expected {self.stage!r}")
        return version

    @property
    def num_rows(self) -> int:
        return self.parquet.metadata.num_rows

    @property
    def current(self) -> bool:
        """Written in this release's data contract, columns in the contract's order: its column
        chunks can be copied into a new shard as they are."""
        return self.version == SCHEMA_VERSION and _fields(self.parquet.schema_arrow) == _fields(SCHEMAS[self.stage])

    def read(self, columns: list[str] | None = None) -> pa.Table:
        """The shard (or only ``columns``) in the current data contract; errors name the file."""
        version = self.version
        try:
            if columns is not None and version == SCHEMA_VERSION:
                table = self.parquet.read(columns=[c for c in columns if c in self.parquet.schema_arrow.names])
            else:
                table = self.parquet.read()
        except (OSError, pa.ArrowException) as e:
            raise DataError(f"{self.path}: not a readable Parquet shard ({e}); re-run the stage with --force") from None
        table = _upgrade(table, version, self.stage)
        expected = SCHEMAS[self.stage].names if columns is None else columns
        missing = [n for n in expected if n not in table.column_names]
        if missing:
            raise DataError(f"{self.path}: missing columns {missing}")
        return table if columns is None else table.select(columns)


def _fields(schema: pa.Schema) -> list[tuple[str, pa.DataType]]:
    return [(f.name, f.type) for f in schema]


def open_shard(path: Path, stage: str, expected_sha256: str | None = None) -> ShardFile:
    """Read one shard's bytes and check them against ``expected_sha256`` (one pass)."""
    try:
        # Into Arrow-owned memory, not Python bytes: Arrow's reader threads may drop the last
        # reference to the buffer, and releasing Python-owned memory needs the GIL, which at
        # interpreter exit aborts the process ("terminate called without an active exception").
        with pa.OSFile(str(path)) as f:
            data = f.read_buffer()
    except FileNotFoundError:
        raise DataError(f"{path}: shard missing (its manifest lists it); re-run the stage that "
                        "made it with --force") from None
    sha = hashlib.sha256(data).hexdigest()
    if expected_sha256 is not None and sha != expected_sha256:
        raise DataError(f"{path}: checksum mismatch with its manifest; the shard is corrupt, re-run the stage with --force")
    return ShardFile(path, data, sha, stage)


def read_shard(path: Path, stage: str, expected_sha256: str | None = None) -> pa.Table:
    """Read one shard, checking checksum (computed on the bytes read, one pass), stage and
    schema version; errors name the file and say what to do."""
    return read_shard_and_digest(path, stage, expected_sha256)[0]


def read_shard_and_digest(path: Path, stage: str, expected_sha256: str | None = None) -> tuple[pa.Table, str]:
    """``read_shard`` and the sha256 of the bytes it read."""
    f = open_shard(path, stage, expected_sha256)
    return f.read(), f.sha256


def _schema_version(path: Path, raw: bytes | None) -> int:
    """The shard's schema version, if this release can read it (as is, or by migrating)."""
    try:
        version = int(raw or b"")
    except ValueError:
        raise DataError(f"{path}: no grao-pipe schema version in its metadata (found {raw!r}); "
                        "it was not written by grao-pipe") from None
    if version > SCHEMA_VERSION:
        raise DataError(f"{path}: schema version {version} is newer than this grao-pipe's "
                        f"({SCHEMA_VERSION}); upgrade grao-pipe to read it")
    if any(v not in MIGRATIONS for v in range(version, SCHEMA_VERSION)):
        raise DataError(f"{path}: schema version {version} is older than {SCHEMA_VERSION} and no "
                        "migration exists for it; re-run the stage that made it with --force")
    return version


def _upgrade(table: pa.Table, version: int, stage: str) -> pa.Table:
    """Bring a shard of an older data contract to the current one (schemas.MIGRATIONS)."""
    for v in range(version, SCHEMA_VERSION):
        table = MIGRATIONS[v](table, stage)
    return table


def shard_is_committed(path: Path, stage: str) -> bool:
    """True if a shard left by an earlier (crashed) run is complete. Shards are committed by
    rename, so a readable footer of the right stage and a readable version is enough: stages
    ask this for every shard on every (resumed) run, and the footer is a small read."""
    if not path.is_file():
        return False
    try:
        meta = pq.read_schema(path).metadata or {}
        _schema_version(path, meta.get(META_VERSION))
    except (OSError, pa.ArrowException, DataError):
        return False
    return meta.get(META_STAGE) == stage.encode()


def _writer_alive(tmp: Path) -> bool:
    """Temporaries are named ``.tmp-<name>.<pid>``: is that writer still running here?"""
    pid = tmp.name.rsplit(".", 1)[-1]
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        pass
    return True


def clean_temporaries(directory: Path) -> None:
    """Remove leftovers of crashed writers (never a committed shard, nor the temporary of a
    live writer: ``--shard`` workers share the directory and clean it when they start)."""
    for p in directory.glob(f"{TMP_PREFIX}*"):
        if _writer_alive(p):
            continue
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
