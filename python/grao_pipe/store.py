"""Shard and manifest I/O with atomic commits.

A shard is written to a temporary name and renamed into place, so it appears complete or not
at all. The manifest is written last (also by rename); a stage directory without a manifest is
an unfinished stage that the next run resumes, keeping the shards it already committed.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from grao_pipe import __version__, remote
from grao_pipe.errors import FULL_ERRNOS, DataError, storage_full
from grao_pipe.schemas import (
    MANIFEST_NAME,
    META_STAGE,
    META_VERSION,
    MIGRATIONS,
    SCHEMA_VERSION,
    SCHEMAS,
    TMP_PREFIX,
)


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def digest(obj: Any) -> str:
    """Stable content hash of a JSON-able object (cache keys, fingerprints)."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()


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


def write_shard(path: Path, table: pa.Table, stage: str, meta: Mapping[bytes, bytes] | None = None) -> dict[str, Any]:
    """Validate ``table`` against the stage schema, write it atomically, return its entry."""
    schema = SCHEMAS[stage]
    if meta:
        schema = schema.with_metadata({**(schema.metadata or {}), **meta})
    extra = [f for f in table.schema if f.name not in schema.names]
    table = table.select(schema.names + [f.name for f in extra]) if extra else table.select(schema.names)
    full = pa.schema(list(schema) + extra, metadata=schema.metadata)
    table = table.cast(full)
    with _committing(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
    remote.publish(path)
    return {"name": path.name, "rows": table.num_rows, "sha256": file_sha256(path)}


def read_shard(path: Path, stage: str, expected_sha256: str | None = None) -> pa.Table:
    """Read one shard, checking checksum and schema version; errors name the file."""
    if expected_sha256 is not None and file_sha256(path) != expected_sha256:
        raise DataError(f"{path}: checksum mismatch with its manifest; the shard is corrupt, re-run the stage with --force")
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as e:
        raise DataError(f"{path}: not a readable Parquet shard ({e}); re-run the stage with --force") from None
    meta = table.schema.metadata or {}
    table = _upgrade(table, _schema_version(path, meta.get(META_VERSION)), stage)
    if meta.get(META_STAGE) != stage.encode():
        raise DataError(f"{path}: written by stage {meta.get(META_STAGE)!r}, expected {stage!r}")
    missing = [n for n in SCHEMAS[stage].names if n not in table.column_names]
    if missing:
        raise DataError(f"{path}: missing columns {missing}")
    return table


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


@dataclass(frozen=True)
class Manifest:
    stage: str
    key: str
    data: Mapping[str, Any]

    @property
    def shards(self) -> list[dict[str, Any]]:
        return list(self.data["shards"])

    @property
    def fingerprint(self) -> str:
        """What downstream cache keys hash: the stage, its key and its shards' checksums."""
        return digest({"stage": self.stage, "key": self.key, "shards": self.data["shards"]})


def write_manifest(
    directory: Path,
    *,
    stage: str,
    key: str,
    config: Mapping[str, Any],
    inputs: Mapping[str, Any],
    shards: Iterable[Mapping[str, Any]],
    stats: Mapping[str, Any],
) -> Manifest:
    shards = list(shards)
    data = {
        "schema_version": SCHEMA_VERSION,
        "stage": stage,
        "key": key,
        "code_version": __version__,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config": config,
        "inputs": inputs,
        "rows": sum(int(s.get("rows", 0)) for s in shards),
        "shards": shards,
        "stats": stats,
    }
    payload = json.dumps(data, indent=2, default=str).encode()
    remote.publish_tree(directory, payload)  # a remote workdir: what it lacks, the manifest last
    atomic_write_bytes(directory / MANIFEST_NAME, payload)
    return Manifest(stage, key, data)


def read_manifest(directory: Path) -> Manifest | None:
    path = directory / MANIFEST_NAME
    # A remote workdir's finished stage may exist only there: read its manifest alone.
    raw = path.read_bytes() if path.is_file() else remote.fetch(path)
    if raw is None:
        return None
    try:
        data = json.loads(raw)
        if not isinstance(data.get("shards"), list):
            raise TypeError("'shards' is not a list")
        return Manifest(str(data["stage"]), str(data["key"]), data)
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
        raise DataError(f"{path}: malformed manifest ({e}); delete the directory or re-run with --force") from None


def member(directory: Path, name: str) -> Path:
    """``directory / name`` for a name taken from a manifest; refuses names that would escape
    the dataset root (absolute paths, separators, ``..``): manifests from other teams are data."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or Path(name).is_absolute():
        raise DataError(f"{directory / MANIFEST_NAME}: shard name {name!r} points outside the dataset; refusing it")
    return remote.ensure_local(directory / name)


def verify(directory: Path) -> list[str]:
    """Problems with a finished stage directory (checksums, schema versions); [] if sound."""
    m = read_manifest(directory)
    if m is None:
        return [f"{directory}: no manifest (not a finished dataset)"]
    problems = []
    for s in m.shards:
        if m.stage not in SCHEMAS:
            break
        try:
            read_shard(member(directory, s["name"]), m.stage, s["sha256"])
        except (DataError, FileNotFoundError) as e:
            problems.append(str(e))
    return problems


def read_stage_table(directory: Path, manifest: Manifest, columns: list[str] | None = None) -> pa.Table:
    tables = [read_shard(member(directory, s["name"]), manifest.stage, s["sha256"]) for s in manifest.shards]
    table = pa.concat_tables(tables, promote_options="default") if tables else pa.table({})
    return table.select(columns) if columns else table


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
