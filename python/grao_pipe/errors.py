"""One error hierarchy; the CLI maps each class to an exit code and a one-line message."""

from __future__ import annotations

import errno
import os


class GraoError(Exception):
    """Base class. Messages name the file, row or key and say what to do."""

    exit_code = 1


class ConfigError(GraoError):
    """A config file or override is invalid (unknown key, wrong type, missing file)."""

    exit_code = 2


class InputError(GraoError):
    """User data is invalid: malformed prompt rows, empty prompt set, bad shard."""

    exit_code = 3


class StageNotReady(GraoError):
    """A stage was asked to run before the stage it reads from has finished."""

    exit_code = 4


class DataError(GraoError):
    """Stored data is inconsistent: checksum mismatch, unknown schema version, corrupt shard."""

    exit_code = 5


class StageFailed(GraoError):
    """A stage's worker process failed (e.g. the torchrun learner)."""

    exit_code = 6


class StorageFull(GraoError):
    """An output could not be written: no space left, quota or file-size limit (EX_IOERR)."""

    exit_code = 74


# What "the disk is full" looks like to a user: no space, quota exceeded, file-size limit.
FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def full_errno(e: BaseException) -> int | None:
    """The errno of a full disk behind ``e``: an OSError's own, its cause's or context's (e.g.
    safetensors wraps the OSError in its own error type), or ENOSPC when only the message says
    so (a Rust library's "No space left on device"). None for any other failure."""
    for err in (e, e.__cause__, e.__context__):
        if isinstance(err, OSError) and err.errno in FULL_ERRNOS:
            return err.errno
    return errno.ENOSPC if "No space left on device" in str(e) else None


def storage_full(e: OSError, what: str) -> StorageFull:
    reason = os.strerror(e.errno) if e.errno else str(e)
    return StorageFull(f"{what}: cannot write ({reason}); free space and re-run the stage, "
                       "which keeps every shard committed so far")


class RemoteUnavailable(GraoError):
    """A remote service (OpenAI-compatible server, object store) stayed unreachable or refused."""

    exit_code = 7


class Locked(GraoError):
    """Another process is running the same stage output (EX_TEMPFAIL: try again later)."""

    exit_code = 75
