"""Inputs named in a config (prompt files, model directories, judge templates) as local paths.

A location is a path (relative to the current directory), a bundled data set (``builtin:NAME``)
or an object-store URL, downloaded once into ``$GRAO_PIPE_CACHE/inputs/`` and refreshed when
the remote objects change. Cache keys hash what these paths hold, never the path itself.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from grao_pipe.errors import InputError
from grao_pipe.storage.remote import download_input, is_url

BUILTIN_PREFIX = "builtin:"


def builtin_path(name: str) -> Path:
    path = Path(str(resources.files("grao_pipe") / "data" / f"{name}.jsonl"))
    if not path.is_file():
        available = sorted(p.stem for p in Path(str(resources.files("grao_pipe") / "data")).glob("*.jsonl"))
        raise InputError(f"no bundled prompt set named {name!r} (available: "
                         f"{', '.join(BUILTIN_PREFIX + a for a in available)})")
    return path


def local_input(location: str) -> Path:
    """A local path for ``location``: itself, a bundled file, or a cached download."""
    if location.startswith(BUILTIN_PREFIX):
        return builtin_path(location[len(BUILTIN_PREFIX):])
    if is_url(location):
        return download_input(location)
    return Path(location)
