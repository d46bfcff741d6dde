"""The workdir and its stage directories: the one object that knows where outputs live.

``Workdir`` is built once from ``cfg.workdir`` (a path, or an object-store URL mirrored by a
local directory). Each stage output is a ``StageDir`` (in the shape of datatrove's
``DataFolder``): it opens, commits and reads shards, commits the manifest, resumes, wipes, and
hands out local paths (for memory-mapping, for transformers). Stages never see the remote layer:
a ``StageDir`` publishes at its commit points and fetches what it reads.

Layout of a stage directory (readable by pyarrow.dataset, polars, DuckDB, Spark as is)::

    shard-00000-of-00004.parquet ...   the data (zstd Parquet, schema in grao_pipe.schemas)
    _manifest.json                     written last: config, inputs, checksums, stats
    _SUCCESS                           written after the manifest
    _quarantine.jsonl, ...             sidecars
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from grao_pipe.errors import DataError, InputError, Locked
from grao_pipe.manifests import Manifest, ShardEntry, parse_manifest
from grao_pipe.schemas import LEGACY_NAMES, MANIFEST_NAME, META_KEY, SUCCESS_NAME, TMP_PREFIX
from grao_pipe.storage import shards
from grao_pipe.storage.remote import Mirror, is_url

_LEGACY_MANIFEST = next(old for old, new in LEGACY_NAMES.items() if new == MANIFEST_NAME)


class Workdir:
    """Where a pipeline's outputs live: ``<root>/<stage>/<key[:16]>/``."""

    def __init__(self, location: str | Path):
        self.location = str(location)
        self.mirror = Mirror.open(self.location) if is_url(self.location) else None
        self.root = self.mirror.local if self.mirror is not None else Path(self.location)
        if self.root.exists() and not self.root.is_dir():
            raise InputError(f"workdir {self.location} is an existing file, not a directory; "
                             "point workdir= at a directory (it is created if missing)")

    def __repr__(self) -> str:
        return f"Workdir({self.location!r})"

    def stage_dir(self, stage: str, key: str) -> StageDir:
        return StageDir(self, self.root / stage / key[:16])

    def cache_dir(self, *parts: str) -> StageDir:
        """A directory of derived, shared files that has no manifest (e.g. raw rewards)."""
        return StageDir(self, self.root.joinpath(*parts))

    def scratch(self, name: str) -> Path:
        """A local-only directory (built models, imports): never published."""
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def versions(self, stage: str) -> list[StageDir]:
        """Every output directory of ``stage``, local and remote (finished or not)."""
        parent = self.root / stage
        names = {p.name for p in parent.iterdir() if p.is_dir()} if parent.is_dir() else set()
        if self.mirror is not None:
            names |= self.mirror.children(parent)
        return [StageDir(self, parent / n) for n in sorted(names) if not n.startswith((TMP_PREFIX, "."))]

    def display(self, path: Path) -> str:
        """How to name ``path`` to a user: its URL when the workdir is remote."""
        return self.mirror.display(path) if self.mirror is not None else str(path)

    def exists(self) -> bool:
        if self.root.is_dir():
            return True
        return self.mirror is not None and bool(self.mirror.children(self.root) or self.mirror.files(self.root))


class StageDir:
    """One stage output directory (or a manifest-less cache directory) of a workdir."""

    def __init__(self, workdir: Workdir, path: Path):
        self.workdir = workdir
        self.path = path
        self._mirror = workdir.mirror

    def __repr__(self) -> str:
        return f"StageDir({self.display})"

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def display(self) -> str:
        return self.workdir.display(self.path)

    # ---- reading ----

    def manifest(self) -> Manifest | None:
        """The finished output's manifest (here, else on the remote), or None if unfinished."""
        for name in (MANIFEST_NAME, _LEGACY_MANIFEST):
            path = self.path / name
            raw = path.read_bytes() if path.is_file() else None
            if raw is None and self._mirror is not None:
                raw = self._mirror.fetch(path)
            if raw is not None:
                return parse_manifest(raw, self.workdir.display(path))
        return None

    def has_manifest(self) -> bool:
        """Whether a manifest file exists (valid or not), here or on the remote."""
        names = (MANIFEST_NAME, _LEGACY_MANIFEST)
        if any((self.path / n).is_file() for n in names):
            return True
        return self._mirror is not None and any(n in self._mirror.files(self.path) for n in names)

    def exists(self) -> bool:
        return self.path.is_dir() or (self._mirror is not None and bool(self._mirror.files(self.path)))

    def member(self, name: str) -> Path:
        """The local path of file ``name`` named by a manifest, fetched if it is only remote.

        Manifests from other teams are data: a name that would leave the directory (absolute,
        with separators, ``..``) and a symlink are refused, so nothing outside a dataset is read.
        """
        where = self.workdir.display(self.path / MANIFEST_NAME)
        if not name or name in (".", "..") or "/" in name or "\\" in name or "\x00" in name or Path(name).is_absolute():
            raise DataError(f"{where}: shard name {name!r} points outside the dataset; refusing it")
        path = self.path / name
        if path.is_symlink():
            raise DataError(f"{self.workdir.display(path)}: is a symlink; a dataset's files must be "
                            "regular files inside it (replace the link by the file, or re-run with --force)")
        if self._mirror is not None:
            self._mirror.ensure_local(path)
        return path

    def local_path(self, name: str = "") -> Path:
        """A local path for ``name`` (a file or a directory such as ``model``), fetched if needed."""
        path = self.path / name if name else self.path
        if self._mirror is not None:
            self._mirror.ensure_local(path)
        return path

    def verified_model(self, entry: ShardEntry, what: str = "") -> Path:
        """The trained export ``entry`` names (``model/``), local, its files hashed against the
        digest the manifest records: a changed or damaged export is refused, never used."""
        from grao_pipe.models import policy_digest

        path = self.local_path(entry.name)
        where = self.workdir.display(path)
        redo = (f"re-run train{f' ({what})' if what else ''} with --force to export it again, or restore "
                f"the directory from a copy")
        try:
            found = policy_digest(path)
        except (InputError, OSError) as e:
            raise DataError(f"{where}: the trained export is damaged ({e}); {redo}") from None
        if found != entry.sha256:
            raise DataError(f"{where}: its files do not hash to the digest its manifest records "
                            f"({found[:12]} != {entry.sha256[:12]}: modified or corrupt); {redo}")
        return path

    def open_shard(self, entry: ShardEntry, stage: str) -> shards.ShardFile:
        """A shard listed in this directory's manifest, its bytes checked (checksum, row count);
        decoded on demand (``ShardFile.read``)."""
        f = shards.open_shard(self.member(entry.name), stage, entry.sha256)
        if f.num_rows != entry.rows:
            raise DataError(f"{self.workdir.display(self.path / entry.name)}: {f.num_rows} rows, its "
                            f"manifest says {entry.rows}; re-run the stage with --force")
        return f

    def read_shard(self, entry: ShardEntry, stage: str, columns: list[str] | None = None) -> pa.Table:
        """A shard listed in this directory's manifest, checked: checksum, schema, row count."""
        return self.open_shard(entry, stage).read(columns)

    def read_table(self, manifest: Manifest, columns: list[str] | None = None) -> pa.Table:
        tables = [self.read_shard(s, manifest.stage, columns) for s in manifest.shards]
        return pa.concat_tables(tables, promote_options="default") if tables else pa.table({})

    def committed(self, name: str, stage: str) -> tuple[ShardEntry, pa.Table]:
        """A shard committed here (by any worker) with its entry, from the file itself."""
        table, sha = shards.read_shard_and_digest(self.member(name), stage)
        return ShardEntry(name=name, rows=table.num_rows, sha256=sha), table

    def committed_entry(self, name: str, stats_key: bytes) -> ShardEntry:
        """A shard committed here with the stats its writer put in its metadata: the footer and
        a checksum pass over the bytes, no decoding."""
        path = self.member(name)
        meta = pq.read_schema(path).metadata or {}
        stats = json.loads(meta[stats_key]) if stats_key in meta else None
        rows = pq.ParquetFile(path).metadata.num_rows
        return ShardEntry(name=name, rows=rows, sha256=shards.file_sha256(path), stats=stats)

    def is_committed(self, name: str, stage: str) -> bool:
        """True if shard ``name`` was committed here by an earlier (crashed) run."""
        return shards.shard_is_committed(self.path / name, stage)

    def adoptable(self, name: str, stage: str) -> bool:
        """Whether shard ``name``, left by an earlier (crashed) run, may be listed in this run's
        manifest: complete, of ``stage``, written for this directory (a shard of an older
        release names none), every page passing its checksum. Anything else is removed, to be
        written again: a resumed manifest never blesses a foreign or damaged file."""
        path = self.path / name
        if not shards.shard_is_committed(path, stage):
            return False
        try:
            f = shards.open_shard(path, stage)
            owner = (f.parquet.schema_arrow.metadata or {}).get(META_KEY)
            if owner is not None and owner != self.name.encode():
                raise DataError(f"{path}: written for {owner.decode(errors='replace')}, not {self.name}")
            f.read()
        except DataError:
            path.unlink(missing_ok=True)
            return False
        return True

    def check_listing(self, m: Manifest) -> None:
        """The manifest and the directory agree: every ``shard-*.parquet`` here is listed (an
        entry dropped would make readers see part of the data), and a shard named ``-of-N``
        comes with N entries."""
        where = self.workdir.display(self.path / MANIFEST_NAME)
        listed = {s.name for s in m.shards}
        present = {p.name for p in self.path.glob("shard-*.parquet")} if self.path.is_dir() else set()
        if self._mirror is not None:
            present |= {n for n in self._mirror.files(self.path) if n.startswith("shard-") and n.endswith(".parquet")}
        if extra := sorted(present - listed):
            raise DataError(f"{self.workdir.display(self.path / extra[0])}: a shard file not listed in its manifest "
                            f"({len(extra)} such); the manifest was edited or the file copied in: re-run the "
                            "stage with --force, or delete the file if it does not belong here")
        of = {int(n.rsplit("-of-", 1)[1].split(".")[0]) for n in listed
              if n.startswith("shard-") and n.rsplit("-of-", 1)[-1].split(".")[0].isdigit()}
        if of and (len(of) > 1 or len(listed) != next(iter(of))):
            raise DataError(f"{where}: lists {len(listed)} shards named as one of {sorted(of)}; entries are "
                            "missing or mixed in from another output: re-run the stage with --force")

    # ---- writing ----

    def prepare(self, force: bool) -> Manifest | None:
        """Return the cached manifest, or make the directory ready for a (resumed) run: leftovers
        of crashed writers removed here and remotely, shards other runs committed fetched."""
        if force:
            self.wipe()
        m = self.manifest()
        if m is not None:
            self._migrate_legacy()
            if self._mirror is not None:  # cached on a remote workdir: the next stage reads it
                self._mirror.pull_tree(self.path, finished_by=None, last=(MANIFEST_NAME, SUCCESS_NAME))
            return m
        self.path.mkdir(parents=True, exist_ok=True)
        shards.clean_temporaries(self.path)
        if self._mirror is not None:
            self._mirror.clean_temporaries(self.path)
            self._mirror.pull_tree(self.path)
        return None

    def remove_if_empty(self) -> None:
        """Remove the directory if nothing is in it (a stage that failed before its first shard)."""
        try:
            if self.path.is_dir() and not any(self.path.iterdir()):
                self.path.rmdir()
        except OSError:  # a concurrent writer got in first, or no permission: leave it
            pass

    def clean(self) -> None:
        """Remove temporaries of crashed writers (never a committed file, nor a live writer's)."""
        if self.path.is_dir():
            shards.clean_temporaries(self.path)

    def pull(self) -> None:
        """Fetch shards other machines committed meanwhile (``--shard`` workers)."""
        if self._mirror is not None:
            self._mirror.pull_tree(self.path)

    def write_shard(self, name: str, table: pa.Table, stage: str, meta: dict[bytes, bytes] | None = None,
                    durable: bool = True, base: shards.ShardFile | None = None) -> ShardEntry:
        """Commit one shard (atomically) and publish it, so another machine can resume.
        ``base``: a shard whose columns come first (``shards.write_shard``)."""
        self.path.mkdir(parents=True, exist_ok=True)
        meta = {META_KEY: self.name.encode(), **(meta or {})}
        entry = shards.write_shard(self.path / name, table, stage, meta, durable=durable, base=base)
        if self._mirror is not None:
            self._mirror.publish(self.path / name)
        return ShardEntry(name=entry["name"], rows=entry["rows"], sha256=entry["sha256"])

    def write_file(self, name: str, data: bytes, publish: bool = False) -> Path:
        """A sidecar (quarantine list, card, results), atomically; published with the manifest,
        or at once with ``publish``."""
        path = self.path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        shards.atomic_write_bytes(path, data)
        if publish and self._mirror is not None:
            self._mirror.publish(path)
        return path

    def commit(self, manifest: Manifest) -> Manifest:
        """Finish the output: publish what the remote lacks and the manifest last, then write the
        manifest and ``_SUCCESS`` here. A crash before this leaves a resumable directory."""
        payload = manifest.to_json()
        self.path.mkdir(parents=True, exist_ok=True)
        if self._mirror is not None:
            self._mirror.publish_tree(self.path, [(MANIFEST_NAME, payload), (SUCCESS_NAME, b"")])
        shards.atomic_write_bytes(self.path / MANIFEST_NAME, payload)
        shards.atomic_write_bytes(self.path / SUCCESS_NAME, b"")
        return manifest

    def wipe(self) -> None:
        """Delete this output (``--force``): the remote copy first, its manifests first of all,
        so a crash in between never resurrects a finished dataset with shards missing."""
        if self._mirror is not None:
            self._mirror.delete_tree(self.path, first=(MANIFEST_NAME, _LEGACY_MANIFEST, SUCCESS_NAME))
        shutil.rmtree(self.path, ignore_errors=True)

    def _migrate_legacy(self) -> None:
        """Rename sidecars an older release wrote (``manifest.json`` -> ``_manifest.json``)."""
        if not self.path.is_dir():
            return
        for old, new in LEGACY_NAMES.items():
            if (self.path / old).is_file() and not (self.path / new).exists():
                os.replace(self.path / old, self.path / new)
                if self._mirror is not None:
                    self._mirror.publish(self.path / new)
        if (self.path / MANIFEST_NAME).is_file() and not (self.path / SUCCESS_NAME).exists():
            self.write_file(SUCCESS_NAME, b"", publish=True)

    @contextlib.contextmanager
    def lock(self, what: str, suffix: str = "", wait: bool = False) -> Iterator[None]:
        """One writer per output: an exclusive flock on ``<parent>/<name><suffix>.lock``.

        A second concurrent run fails fast with Locked (exit code 75), or waits with ``wait``.
        The kernel drops the lock when its holder dies, so a crash never leaves it stuck. Locks
        are local: with a remote workdir, exclusion across machines is the scheduler's job.
        """
        lock_path = self.path.parent / f"{self.path.name}{suffix}.lock"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            f = open(lock_path, "a+")  # noqa: SIM115 - closed below, after the body
        except OSError as e:
            if e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise
            if self.has_manifest():  # a finished output in a read-only workdir: read, nothing written
                yield
                return
            raise InputError(f"{lock_path}: cannot create the lock file ({os.strerror(e.errno)}); the workdir "
                             "must be writable to run a stage that is not finished") from None
        with f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                raise Locked(f"{what} is being run by another process (lock {f.name}); retry later "
                             "or pass --wait") from None
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    # ---- checking ----

    def verify(self) -> list[str]:
        """Problems of a finished output; [] if sound. Every shard is read and checked: checksum,
        schema version, row count against the file footer. On a remote workdir the objects
        themselves are checked (not the local mirror): size, checksum, footer."""
        try:
            m = self.manifest()
        except DataError as e:
            return [str(e)]
        if m is None:
            return [f"{self.display}: no manifest (not a finished dataset)"]
        problems: list[str] = []
        where = self.workdir.display(self.path / MANIFEST_NAME)
        if m.stage != self.path.parent.name:
            problems.append(f"{where}: says stage {m.stage!r}, but it is under {self.path.parent.name}/")
        if not m.key.startswith(self.name):
            problems.append(f"{where}: says key {m.key[:16]}, but its directory is {self.name}")
        try:
            self.check_listing(m)
        except DataError as e:
            problems.append(str(e))
        remote = self._mirror.files(self.path) if self._mirror is not None else None
        for s in m.shards:
            try:
                if s.name == "model" and m.stage == "train":  # a directory: its files' digest
                    self.verified_model(s)
                elif remote is not None:
                    self._verify_remote(s, m.stage, remote)
                else:
                    self.read_shard(s, m.stage)
            except DataError as e:
                problems.append(str(e))
        return problems

    def _verify_remote(self, entry: ShardEntry, stage: str, remote: dict[str, Any]) -> None:
        assert self._mirror is not None
        where = self.workdir.display(self.path / entry.name)
        if entry.name not in remote:
            raise DataError(f"{where}: listed in the manifest but missing from the object store")
        raw = self._mirror.fetch(self.path / entry.name)
        if raw is None:
            raise DataError(f"{where}: listed in the manifest but missing from the object store")
        if hashlib.sha256(raw).hexdigest() != entry.sha256:
            raise DataError(f"{where}: the object's checksum differs from the manifest (overwritten or corrupt)")
        try:
            rows = pq.ParquetFile(pa.BufferReader(raw)).metadata.num_rows
        except (OSError, pa.ArrowException) as e:
            raise DataError(f"{where}: not a readable Parquet shard ({e})") from None
        if rows != entry.rows:
            raise DataError(f"{where}: {rows} rows, its manifest says {entry.rows}")
