"""Python-function scorers: ``module:function`` with ``fn(prompt, response, reference) -> float``."""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Sequence

from grao_pipe.config import FunctionScorer
from grao_pipe.errors import ConfigError
from grao_pipe.scoring.base import Messages, ScoreResult

RewardFn = Callable[[str, str, str], float]


def load_function(spec: str, key: str) -> RewardFn:
    """Resolve ``module:function``; errors name the config key."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"{key}: {spec!r} is not 'module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"{key}: cannot import module {module_name!r} ({e})") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ConfigError(f"{key}: {module_name!r} has no function {attr!r}")
    return fn


class FunctionScorerImpl:
    def __init__(self, cfg: FunctionScorer):
        self.name = cfg.name
        self.fn = load_function(cfg.function, f"score.scorers[{cfg.name}].function")

    def score(self, prompts: list[str], responses: list[str], references: list[str],
              messages: Sequence[Messages] | None = None) -> ScoreResult:
        """A scorer exception or a non-finite value is an invalid (None) reward, counted, never
        silently scored 0."""
        out: list[float | None] = []
        errors = 0
        for p, o, y in zip(prompts, responses, references, strict=True):
            try:
                v = float(self.fn(p, o, y))
            except Exception:  # one row's failure invalidates that row only
                errors += 1
                out.append(None)
                continue
            out.append(v if math.isfinite(v) else None)
        return ScoreResult(out, errors=errors)
