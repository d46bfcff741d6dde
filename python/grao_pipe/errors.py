"""One error hierarchy; the CLI maps each class to an exit code and a one-line message."""

from __future__ import annotations


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


class Locked(GraoError):
    """Another process is running the same stage output (EX_TEMPFAIL: try again later)."""

    exit_code = 75
