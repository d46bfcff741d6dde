"""Python-function scorers: ``module:function``.

Row by row, ``fn(prompt, response, reference) -> float``; or, for a function marked with
``grao_pipe.scoring.base.batched``, once per shard with whole Arrow columns (the built-in rule
scorers are Polars expressions this way). Invalid values (exceptions, None, NaN, inf) are null
rewards, counted, never silently 0.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa

from grao_pipe.config import FunctionScorer
from grao_pipe.errors import ConfigError, InputError
from grao_pipe.scoring.base import ScoreInput, ScoreResult

RewardFn = Callable[[str, str, str], float]


def _split(spec: str, key: str) -> tuple[str, str]:
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"{key}: {spec!r} is not 'module:function'")
    return module_name, attr


def _import_error(module_name: str, key: str, e: Exception) -> ConfigError:
    """What went wrong importing a scorer's module, and how such a module is found."""
    if not isinstance(e, ImportError):  # the module's own code raising at import
        return ConfigError(f"{key}: cannot import module {module_name!r} ({type(e).__name__}: {e})")
    missing = getattr(e, "name", None)
    if missing and module_name != missing and not module_name.startswith(missing + "."):
        # The module was found; something it imports was not.
        return ConfigError(f"{key}: module {module_name!r} was found but its own import of {missing!r} failed "
                           f"({e}); install {missing!r} in this environment")
    rel = module_name.replace(".", "/")
    return ConfigError(f"{key}: cannot import module {module_name!r} ({e}). Scorer modules are imported by "
                       f"name from Python's search path: the file {rel}.py (or package {rel}/) must sit under "
                       "a directory on PYTHONPATH (e.g. PYTHONPATH=/dir/with/the/module grao-pipe ...; the "
                       "`grao-pipe` command does not search the current directory) or be installed")


def module_file(spec: str, key: str) -> Path | None:
    """The source file of ``module:function``'s module, found without running it (its parent
    packages are imported): what the rewards' cache key hashes. None: not a file (built in)."""
    module_name, _ = _split(spec, key)
    try:
        found = importlib.util.find_spec(module_name)
    except Exception as e:  # a missing parent package, or one raising at import
        raise _import_error(module_name, key, e) from None
    if found is None:
        raise _import_error(module_name, key, ModuleNotFoundError(f"No module named {module_name!r}",
                                                                  name=module_name))
    origin = Path(found.origin) if found.origin and found.has_location else None
    return origin if origin is not None and origin.is_file() else None


def load_function(spec: str, key: str) -> RewardFn:
    """Resolve ``module:function``; errors name the config key."""
    module_name, attr = _split(spec, key)
    try:
        module = importlib.import_module(module_name)
    except Exception as e:
        raise _import_error(module_name, key, e) from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ConfigError(f"{key}: {module_name!r} has no function {attr!r}")
    return fn


class FunctionScorerImpl:
    def __init__(self, cfg: FunctionScorer):
        self.name = cfg.name
        self.fn = load_function(cfg.function, f"score.scorers[{cfg.name}].function")

    def score(self, rows: ScoreInput) -> ScoreResult:
        if getattr(self.fn, "grao_batched", False):
            return self._batched(rows)
        out: list[float | None] = []
        errors = 0
        for p, o, y in zip(rows.prompt.to_pylist(), rows.response.to_pylist(), rows.reference.to_pylist(), strict=True):
            try:
                v = float(self.fn(p, o, y))
            except Exception:  # one row's failure invalidates that row only
                errors += 1
                out.append(None)
                continue
            out.append(v if math.isfinite(v) else None)
        return ScoreResult(pa.array(out, pa.float64()), errors=errors)

    def _batched(self, rows: ScoreInput) -> ScoreResult:
        import pyarrow.compute as pc

        try:
            raw = self.fn(rows.prompt, rows.response, rows.reference)
            values = pa.array(raw, pa.float64(), from_pandas=True) if not isinstance(raw, pa.Array) else raw.cast(pa.float64())
        except Exception as e:  # a batched scorer that raises is a bug in it, not a bad row
            raise InputError(f"score.scorers[{self.name}]: {self.fn.__module__}.{self.fn.__name__} raised "
                             f"{type(e).__name__}: {e}; a batched scorer returns null for invalid rows") from None
        if len(values) != len(rows):
            raise InputError(f"score.scorers[{self.name}]: returned {len(values)} values for {len(rows)} rows")
        finite = pc.is_finite(values)
        # Null arrays, not pa.scalar(None): converting a Python object makes pyarrow import
        # pandas (0.4 s a process) when it is installed; the stage itself never needs it.
        values = pc.if_else(finite, values, pa.nulls(len(values), pa.float64()))
        return ScoreResult(values, errors=values.null_count)
