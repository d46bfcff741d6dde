"""The storage layer: shard files, the workdir and its stage directories, inputs as local paths.

The only package that imports the remote layer (``storage.remote``); everything above it talks
to a ``Workdir`` / ``StageDir`` and receives local paths.
"""

from grao_pipe.hashing import digest
from grao_pipe.storage.inputs import local_input
from grao_pipe.storage.remote import is_url
from grao_pipe.storage.shards import (
    atomic_write_bytes,
    content_sha256,
    file_sha256,
    read_shard,
    shard_is_committed,
    write_shard,
)
from grao_pipe.storage.workdir import StageDir, Workdir

__all__ = [
    "StageDir",
    "Workdir",
    "atomic_write_bytes",
    "content_sha256",
    "digest",
    "file_sha256",
    "is_url",
    "local_input",
    "read_shard",
    "shard_is_committed",
    "write_shard",
]
