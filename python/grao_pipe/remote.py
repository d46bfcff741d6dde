"""Object storage: remote workdirs and inputs (``s3://``, ``gs://``, ``abfs://``…) via pyarrow.fs.

A remote workdir is mirrored by a local directory (``$GRAO_PIPE_CACHE/mirrors/<hash>``, default
``~/.cache/grao-pipe``). Stages keep computing on local files — the learner memory-maps shards,
transformers loads model directories — and the store publishes at its commit points:

- ``write_shard`` uploads the shard it just committed, so another machine can resume;
- ``write_manifest`` uploads what the directory has that the remote lacks, then the manifest,
  last: a remote dataset is finished exactly when its manifest exists;
- ``read_manifest`` of a directory without a local manifest downloads the remote one when it is
  finished (a dataset made on another machine or by another team);
- ``prepare`` of an unfinished stage downloads the shards other runs already committed.

Every upload goes to a temporary key and is copied to its final key only once complete, the
object-store form of write-then-rename: a crash or a network failure mid-upload leaves no
partial shard under a shard's name (S3 multipart uploads are also invisible until completed).
Locks stay local (flock on the mirror): exclusion across machines is the scheduler's job
(one Airflow DAG run at a time, one cron host).
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TypeVar, cast
from urllib.parse import urlparse

import pyarrow.fs as pafs

from grao_pipe.errors import FULL_ERRNOS, InputError, RemoteUnavailable, storage_full
from grao_pipe.schemas import MANIFEST_NAME, TMP_PREFIX

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


@dataclass(frozen=True)
class Mirror:
    url: str
    local: Path
    fs: pafs.FileSystem
    base: str

    def key(self, path: Path) -> str:
        rel = path.resolve().relative_to(self.local)
        return f"{self.base}/{rel.as_posix()}" if rel.parts else self.base


_MIRRORS: dict[Path, Mirror] = {}


def _connect(url: str) -> tuple[pafs.FileSystem, str]:
    try:
        fs, base = pafs.FileSystem.from_uri(url)
    except (OSError, ValueError) as e:
        raise InputError(f"{url}: cannot open this storage location ({e}); check the URL and the "
                         "credentials in the environment (AWS_ACCESS_KEY_ID, AWS_ENDPOINT_URL…)") from None
    return fs, base.rstrip("/")


def local_workdir(workdir: str) -> Path:
    """The local directory the stages use for ``workdir``: itself, or a remote workdir's mirror."""
    if not is_url(workdir):
        return Path(workdir)
    url = workdir.rstrip("/")
    local = (cache_root() / "mirrors" / hashlib.sha256(url.encode()).hexdigest()[:16]).resolve()
    if local not in _MIRRORS:
        fs, base = _connect(url)
        local.mkdir(parents=True, exist_ok=True)
        (local / "REMOTE").write_text(url + "\n")  # which remote this mirror stands for
        _MIRRORS[local] = Mirror(url, local, fs, base)
    return local


def display(path: Path) -> str:
    """How to name ``path`` to a user: its remote URL when it lies in a mirror."""
    m = _mirror_of(path)
    return f"{m.url}/{path.resolve().relative_to(m.local).as_posix()}" if m is not None else str(path)


def _mirror_of(path: Path) -> Mirror | None:
    if not _MIRRORS:
        return None
    p = path.resolve()
    return next((m for root, m in _MIRRORS.items() if p.is_relative_to(root)), None)


def _put(m: Mirror, path: Path, data: bytes | None = None) -> None:
    """Upload a file (or ``data`` for it) under a temporary key, check its size, then copy it to
    its final key: the copy is atomic, a multipart upload cut short is not (pyarrow completes a
    stream it closes, even after an error)."""
    key = m.key(path)
    tmp = f"{key.rsplit('/', 1)[0]}/{TMP_PREFIX}{path.name}.{os.getpid()}"
    with (io.BytesIO(data) if data is not None else open(path, "rb")) as src:
        size = _copy(src, m.fs.open_output_stream(tmp))
    if m.fs.get_file_info(tmp).size != size:
        m.fs.delete_file(tmp)
        raise OSError(f"upload of {path} to {m.url} was incomplete; re-run the stage")
    m.fs.move(tmp, key)


def _copy(src: BinaryIO, out: Any) -> int:
    size = 0
    with out:
        while block := src.read(_CHUNK):
            out.write(block)
            size += len(block)
    return size


@_storage_errors
def publish(path: Path) -> None:
    """Upload a file the store has just committed, if it lies in a remote workdir's mirror."""
    m = _mirror_of(path)
    if m is not None:
        _put(m, path)


def _remote_files(m: Mirror, directory: Path) -> dict[str, int]:
    """Relative path -> size of the committed files under the remote ``directory``."""
    base = m.key(directory)
    infos = m.fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
    out = {}
    for info in infos:
        rel = info.path[len(base) + 1:]
        if info.type == pafs.FileType.File and not Path(rel).name.startswith(TMP_PREFIX):
            out[rel] = info.size
    return out


def _walk(directory: Path) -> dict[str, int]:
    out = {}
    for p in directory.rglob("*"):
        rel = p.relative_to(directory)
        if p.is_file() and not p.name.startswith(TMP_PREFIX) and rel.parts[0] not in LOCAL_ONLY:
            out[rel.as_posix()] = p.stat().st_size
    return out


@_storage_errors
def publish_tree(directory: Path, manifest: bytes) -> None:
    """Upload what ``directory`` has that its remote lacks, then ``manifest``, last. Called
    before the manifest is committed locally: if this fails the stage is unfinished here too,
    and the next run publishes again instead of calling it cached."""
    m = _mirror_of(directory)
    if m is None:
        return
    remote = _remote_files(m, directory)
    for rel, size in _walk(directory).items():
        if rel != MANIFEST_NAME and remote.get(rel) != size:
            _put(m, directory / rel)
    _put(m, directory / MANIFEST_NAME, manifest)


@_storage_errors
def pull_tree(directory: Path, *, finished_only: bool) -> bool:
    """Download the remote ``directory`` into the mirror (files missing or of another size),
    the manifest last. With ``finished_only`` nothing is fetched unless the remote has a
    manifest. Returns whether anything was downloaded."""
    m = _mirror_of(directory)
    if m is None:
        return False
    remote = _remote_files(m, directory)
    if finished_only and MANIFEST_NAME not in remote:
        return False
    base = m.key(directory)
    fetched = False
    for rel in sorted(remote, key=lambda r: r == MANIFEST_NAME):
        dest = directory / rel
        if dest.is_file() and dest.stat().st_size == remote[rel]:
            continue
        _get(m.fs, f"{base}/{rel}", dest)
        fetched = True
    return fetched


@_storage_errors
def fetch(path: Path) -> bytes | None:
    """The remote bytes of a mirror file (a manifest), without storing them; None if absent."""
    m = _mirror_of(path)
    if m is None or m.fs.get_file_info(m.key(path)).type != pafs.FileType.File:
        return None
    with m.fs.open_input_stream(m.key(path)) as src:
        return bytes(src.read())


@_storage_errors
def ensure_local(path: Path) -> Path:
    """``path``, downloaded first if it lies in a mirror and is not here yet: a finished
    dataset's shards (or a model directory) are fetched when they are read, not when a listing
    or a status check reads its manifest."""
    m = _mirror_of(path)
    if m is not None and not path.exists():
        info = m.fs.get_file_info(m.key(path))
        if info.type == pafs.FileType.File:
            _get(m.fs, info.path, path)
        elif info.type == pafs.FileType.Directory:
            pull_tree(path, finished_only=False)
    return path


def _get(fs: pafs.FileSystem, key: str, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f"{TMP_PREFIX}{dest.name}.{os.getpid()}")
    with fs.open_input_stream(key) as src, open(tmp, "wb") as out:
        shutil.copyfileobj(src, out, _CHUNK)
    os.replace(tmp, dest)


@_storage_errors
def clean_remote_temporaries(directory: Path) -> None:
    """Delete upload leftovers of crashed writers under the remote ``directory``; only stale
    ones, since another machine's worker (``--shard``) may be uploading right now."""
    m = _mirror_of(directory)
    if m is None:
        return
    base = m.key(directory)
    for info in m.fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True)):
        if (info.type == pafs.FileType.File and info.base_name.startswith(TMP_PREFIX)
                and (info.mtime is None or time.time() - info.mtime.timestamp() > STALE_TEMPORARY_S)):
            m.fs.delete_file(info.path)


@_storage_errors
def subdirectories(directory: Path) -> list[Path]:
    """Local and remote children of ``directory`` (stage versions), as mirror paths."""
    names = {p.name for p in directory.glob("*/")} if directory.is_dir() else set()
    m = _mirror_of(directory)
    if m is not None:
        infos = m.fs.get_file_info(pafs.FileSelector(m.key(directory), allow_not_found=True))
        names |= {i.base_name for i in infos if i.type == pafs.FileType.Directory}
    return [directory / n for n in sorted(names)]


def local_input(location: str) -> Path:
    """A local path for an input (prompt file, model directory): itself, or a cached download
    refreshed when the remote objects' sizes or modification times change."""
    if not is_url(location):
        return Path(location)
    return _download_input(location.rstrip("/"))


@functools.lru_cache(maxsize=64)
@_storage_errors
def _download_input(url: str) -> Path:
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


@_storage_errors
def delete_tree(directory: Path) -> None:
    """Remove the remote copy of ``directory`` (``--force``), its manifest first: a reader never
    sees a finished dataset with shards missing, and nothing stale is pulled back."""
    m = _mirror_of(directory)
    if m is not None:
        key = m.key(directory)
        if m.fs.get_file_info(f"{key}/{MANIFEST_NAME}").type == pafs.FileType.File:
            m.fs.delete_file(f"{key}/{MANIFEST_NAME}")
        m.fs.delete_dir_contents(key, missing_dir_ok=True)
