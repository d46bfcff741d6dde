"""Object storage (``s3://``, ``gs://``, ``abfs://``…) through pyarrow.fs: the remote layer.

Only ``grao_pipe.storage`` imports this module. A remote workdir is mirrored by a local directory
(``$GRAO_PIPE_CACHE/mirrors/<hash>``, default ``~/.cache/grao-pipe``): stages compute on local
files (the learner memory-maps shards, transformers loads model directories) and the
``Workdir`` publishes at its commit points through a ``Mirror``:

- a committed shard is uploaded right away, so another machine can resume;
- a finished stage uploads what the remote lacks, then the manifest, last: a remote dataset is
  finished exactly when its manifest exists;
- a finished stage found only remotely is read lazily (its manifest, then each file when read);
- an unfinished stage downloads the shards other runs already committed, and resumes.

Every upload goes to a temporary key and is copied to its final key only once complete, the
object-store form of write-then-rename: a crash or a network failure mid-upload leaves no
partial shard under a shard's name (S3 multipart uploads are also invisible until completed).
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import shutil
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TypeVar, cast
from urllib.parse import urlparse

import pyarrow.fs as pafs

from grao_pipe.errors import FULL_ERRNOS, InputError, RemoteUnavailable, storage_full
from grao_pipe.schemas import TMP_PREFIX

# Resume state and scratch copies: useful only on the machine that made them.
LOCAL_ONLY = ("checkpoints", "cache")
_CHUNK = 8 << 20
# Upload leftovers younger than this may belong to a writer that is still running.
STALE_TEMPORARY_S = 3600

F = TypeVar("F", bound=Callable[..., Any])


def _storage_errors(fn: F) -> F:
    """Turn the OSErrors of object-store calls (unreachable endpoint, access denied, no such
    bucket) into one clear error, and a full local disk into StorageFull."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except OSError as e:
            if e.errno in FULL_ERRNOS:
                raise storage_full(e, e.filename or "the local mirror") from None
            raise RemoteUnavailable(f"object storage: {e}; check the endpoint (AWS_ENDPOINT_URL), the "
                                    "credentials and that the bucket exists, then re-run") from None

    return cast(F, wrapper)


def is_url(location: str | Path) -> bool:
    """``s3://bucket/key`` and friends; plain and ``file://`` paths are local."""
    scheme = urlparse(str(location)).scheme
    return len(scheme) > 1 and scheme != "file"  # one letter: a Windows drive


def cache_root() -> Path:
    return Path(os.environ.get("GRAO_PIPE_CACHE") or Path.home() / ".cache" / "grao-pipe")


def _connect(url: str) -> tuple[pafs.FileSystem, str]:
    try:
        fs, base = pafs.FileSystem.from_uri(url)
    except (OSError, ValueError) as e:
        raise InputError(f"{url}: cannot open this storage location ({e}); check the URL and the "
                         "credentials in the environment (AWS_ACCESS_KEY_ID, AWS_ENDPOINT_URL…)") from None
    return fs, base.rstrip("/")


@dataclass(frozen=True)
class RemoteFile:
    size: int
    mtime: float | None


@dataclass(frozen=True)
class Mirror:
    """A remote directory and the local directory standing for it."""

    url: str
    local: Path
    fs: pafs.FileSystem
    base: str

    @classmethod
    def open(cls, url: str) -> Mirror:
        url = url.rstrip("/")
        local = (cache_root() / "mirrors" / hashlib.sha256(url.encode()).hexdigest()[:16]).resolve()
        fs, base = _connect(url)
        return cls(url, local, fs, base)

    def key(self, path: Path) -> str:
        rel = path.resolve().relative_to(self.local) if path.is_absolute() else path
        return f"{self.base}/{rel.as_posix()}" if rel.parts else self.base

    def display(self, path: Path) -> str:
        return f"{self.url}/{path.resolve().relative_to(self.local).as_posix()}"

    def mark(self) -> None:
        """Create the mirror directory, noting which remote it stands for (on first write)."""
        self.local.mkdir(parents=True, exist_ok=True)
        marker = self.local / "REMOTE"
        if not marker.is_file():
            marker.write_text(self.url + "\n")

    def _put(self, path: Path, data: bytes | None = None) -> None:
        """Upload a file (or ``data`` for it) under a temporary key, check its size, then copy
        it to its final key: the copy is atomic, a multipart upload cut short is not (pyarrow
        completes a stream it closes, even after an error)."""
        key = self.key(path)
        tmp = f"{key.rsplit('/', 1)[0]}/{TMP_PREFIX}{path.name}.{os.getpid()}"
        with (io.BytesIO(data) if data is not None else open(path, "rb")) as src:
            size = _copy(src, self.fs.open_output_stream(tmp))
        if self.fs.get_file_info(tmp).size != size:
            self.fs.delete_file(tmp)
            raise OSError(f"upload of {path} to {self.url} was incomplete; re-run the stage")
        self.fs.move(tmp, key)

    @_storage_errors
    def publish(self, path: Path) -> None:
        """Upload one file the workdir has just committed."""
        self._put(path)

    @_storage_errors
    def files(self, directory: Path) -> dict[str, RemoteFile]:
        """Relative path -> size and time of the committed objects under the remote ``directory``."""
        base = self.key(directory)
        infos = self.fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
        out = {}
        for info in infos:
            rel = info.path[len(base) + 1:]
            if info.type == pafs.FileType.File and not Path(rel).name.startswith(TMP_PREFIX):
                out[rel] = RemoteFile(info.size, info.mtime.timestamp() if info.mtime else None)
        return out

    @_storage_errors
    def publish_tree(self, directory: Path, last: Collection[tuple[str, bytes]]) -> None:
        """Upload what ``directory`` has that its remote lacks, then the ``last`` files (the
        manifest, the success marker) in order. Called before the manifest is committed
        locally: if this fails the stage is unfinished here too, and the next run publishes
        again instead of calling it cached."""
        remote = self.files(directory)
        names = {name for name, _ in last}
        for rel, size in _walk(directory).items():
            if rel not in names and (rel not in remote or remote[rel].size != size):
                self._put(directory / rel)
        for name, data in last:
            self._put(directory / name, data)

    @_storage_errors
    def pull_tree(self, directory: Path, *, finished_by: str | None = None, last: Collection[str] = ()) -> bool:
        """Download the remote ``directory`` into the mirror (files missing or of another
        size), the ``last`` names last. With ``finished_by`` nothing is fetched unless the remote
        has that file. Returns whether anything was downloaded."""
        remote = self.files(directory)
        if finished_by is not None and finished_by not in remote:
            return False
        base = self.key(directory)
        fetched = False
        for rel in sorted(remote, key=lambda r: r in last):
            dest = directory / rel
            if dest.is_file() and dest.stat().st_size == remote[rel].size:
                continue
            _get(self.fs, f"{base}/{rel}", dest)
            fetched = True
        return fetched

    @_storage_errors
    def fetch(self, path: Path) -> bytes | None:
        """The remote bytes of one file (a manifest), without storing them; None if absent."""
        if self.fs.get_file_info(self.key(path)).type != pafs.FileType.File:
            return None
        with self.fs.open_input_stream(self.key(path)) as src:
            return bytes(src.read())

    @_storage_errors
    def ensure_local(self, path: Path) -> Path:
        """``path``, downloaded first if it is not here yet (a file, or a whole directory)."""
        if not path.exists():
            info = self.fs.get_file_info(self.key(path))
            if info.type == pafs.FileType.File:
                _get(self.fs, info.path, path)
            elif info.type == pafs.FileType.Directory:
                self.pull_tree(path)
        return path

    @_storage_errors
    def clean_temporaries(self, directory: Path) -> None:
        """Delete upload leftovers of crashed writers under the remote ``directory``; only stale
        ones, since another machine's worker (``--shard``) may be uploading right now."""
        base = self.key(directory)
        for info in self.fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True)):
            if (info.type == pafs.FileType.File and info.base_name.startswith(TMP_PREFIX)
                    and (info.mtime is None or time.time() - info.mtime.timestamp() > STALE_TEMPORARY_S)):
                self.fs.delete_file(info.path)

    @_storage_errors
    def children(self, directory: Path) -> set[str]:
        infos = self.fs.get_file_info(pafs.FileSelector(self.key(directory), allow_not_found=True))
        return {i.base_name for i in infos if i.type == pafs.FileType.Directory}

    @_storage_errors
    def delete_tree(self, directory: Path, first: Collection[str] = ()) -> None:
        """Remove the remote copy of ``directory``, the ``first`` names (its manifests) before
        the rest: a reader never sees a finished dataset with shards missing."""
        key = self.key(directory)
        for name in first:
            if self.fs.get_file_info(f"{key}/{name}").type == pafs.FileType.File:
                self.fs.delete_file(f"{key}/{name}")
        self.fs.delete_dir_contents(key, missing_dir_ok=True)


def _copy(src: BinaryIO, out: Any) -> int:
    size = 0
    with out:
        while block := src.read(_CHUNK):
            out.write(block)
            size += len(block)
    return size


def _walk(directory: Path) -> dict[str, int]:
    out = {}
    for p in directory.rglob("*"):
        rel = p.relative_to(directory)
        if p.is_file() and not p.name.startswith(TMP_PREFIX) and rel.parts[0] not in LOCAL_ONLY:
            out[rel.as_posix()] = p.stat().st_size
    return out


def _get(fs: pafs.FileSystem, key: str, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f"{TMP_PREFIX}{dest.name}.{os.getpid()}")
    with fs.open_input_stream(key) as src, open(tmp, "wb") as out:
        shutil.copyfileobj(src, out, _CHUNK)
    os.replace(tmp, dest)


@functools.lru_cache(maxsize=64)
@_storage_errors
def download_input(url: str) -> Path:
    """A local copy of a remote input (prompt file, model directory, template), re-downloaded
    when the remote objects' sizes or modification times change."""
    url = url.rstrip("/")
    fs, base = _connect(url)
    info = fs.get_file_info(base)
    if info.type == pafs.FileType.NotFound:
        raise InputError(f"{url}: no such object or prefix")
    if info.type == pafs.FileType.File:
        listing = {"": info}
    else:
        infos = fs.get_file_info(pafs.FileSelector(base, recursive=True))
        listing = {i.path[len(base) + 1:]: i for i in infos if i.type == pafs.FileType.File}
    stamp = {rel: [i.size, str(i.mtime)] for rel, i in sorted(listing.items())}
    dest = cache_root() / "inputs" / hashlib.sha256(url.encode()).hexdigest()[:16] / Path(base).name
    stamp_file = dest.parent / "source.json"
    if not (stamp_file.is_file() and json.loads(stamp_file.read_text()) == stamp):
        if dest.is_dir():
            shutil.rmtree(dest)
        dest.unlink(missing_ok=True)
        for rel, i in listing.items():
            _get(fs, i.path, dest / rel if rel else dest)
        stamp_file.write_text(json.dumps(stamp))
    return dest
