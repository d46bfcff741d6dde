"""Shard files: Parquet with the data contract's schema, written atomically, read with checks.

A shard is written to a temporary name and renamed into place, so it appears complete or not
at all. Reading checks the checksum while reading (one pass over the bytes), the stage and the
schema version, and upgrades older versions (``schemas.MIGRATIONS``). This module knows files
only; where they live (a workdir, its remote mirror) is ``grao_pipe.storage.workdir``'s job.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from grao_pipe.errors import FULL_ERRNOS, DataError, storage_full
from grao_pipe.schemas import (
    META_STAGE,
    META_VERSION,
    MIGRATIONS,
    SCHEMA_VERSION,
    SCHEMAS,
    TMP_PREFIX,
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
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}.{os.getpid()}")
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


def write_shard(path: Path, table: pa.Table, stage: str, meta: Mapping[bytes, bytes] | None = None,
                durable: bool = True) -> dict[str, Any]:
    """Validate ``table`` against the stage schema, write it atomically, return its manifest entry
    (name, rows, sha256 of the bytes written). ``durable``: fsync before the rename (shards a
    manifest will list); a cache that is re-derivable skips it."""
    schema = SCHEMAS[stage]
    if meta:
        schema = schema.with_metadata({**(schema.metadata or {}), **meta})
    extra = [f for f in table.schema if f.name not in schema.names]
    table = table.select(schema.names + [f.name for f in extra]) if extra else table.select(schema.names)
    full = pa.schema(list(schema) + extra, metadata=schema.metadata)
    table = table.cast(full)
    sink = pa.BufferOutputStream()
    # Page checksums: a torn or bit-flipped page is an error on read, never wrong numbers.
    # No dictionary encoding: token-id and log-prob lists do not repeat, and trying it made
    # writing ~3x slower for files ~5% smaller (zstd already takes the repeated strings).
    pq.write_table(table, sink, compression="zstd", write_page_checksum=True, use_dictionary=False)
    data = sink.getvalue()
    with _committing(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        if durable:
            f.flush()
            os.fsync(f.fileno())
    return {"name": path.name, "rows": table.num_rows, "sha256": hashlib.sha256(data).hexdigest()}


def read_shard(path: Path, stage: str, expected_sha256: str | None = None) -> pa.Table:
    """Read one shard, checking checksum (computed on the bytes read, one pass), stage and
    schema version; errors name the file and say what to do."""
    return read_shard_and_digest(path, stage, expected_sha256)[0]


def read_shard_and_digest(path: Path, stage: str, expected_sha256: str | None = None) -> tuple[pa.Table, str]:
    """``read_shard`` and the sha256 of the bytes it read."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: shard missing (its manifest lists it); re-run the stage that "
                        "made it with --force") from None
    sha = hashlib.sha256(data).hexdigest()
    if expected_sha256 is not None and sha != expected_sha256:
        raise DataError(f"{path}: checksum mismatch with its manifest; the shard is corrupt, re-run the stage with --force")
    try:
        # ParquetFile, not read_table: no dataset machinery (and its pandas import) per shard.
        table = pq.ParquetFile(pa.BufferReader(data), page_checksum_verification=True).read()
    except (OSError, pa.ArrowException) as e:
        raise DataError(f"{path}: not a readable Parquet shard ({e}); re-run the stage with --force") from None
    meta = table.schema.metadata or {}
    table = _upgrade(table, _schema_version(path, meta.get(META_VERSION)), stage)
    if meta.get(META_STAGE) != stage.encode():
        raise DataError(f"{path}: written by stage {meta.get(META_STAGE)!r}, expected {stage!r}")
    missing = [n for n in SCHEMAS[stage].names if n not in table.column_names]
    if missing:
        raise DataError(f"{path}: missing columns {missing}")
    return table, sha


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
