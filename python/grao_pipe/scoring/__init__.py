"""Scorers: R(o, y), the reward of a response relative to the prompt's reference answer.

Kinds: ``function`` (Python), ``judge`` (comparative LLM judge, docs/objectives.md), ``reward_model``
(scalar sequence classifier, R = r(o) - r(y)). Several combine with weights. A scorer gets its
own config section and the local paths of the files it reads (``ScorerFiles``, resolved by the
pipeline), never the whole pipeline config.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from grao_pipe.config import FunctionScorer, JudgeScorer, RewardModelScorer, ScorerConfig
from grao_pipe.hashing import digest
from grao_pipe.scoring.base import Scorer, ScoreResult
from grao_pipe.sections import keyed

__all__ = ["ModelRef", "ScoreResult", "Scorer", "ScorerFiles", "build", "scorer_files", "scorer_key"]


class ModelRef(Protocol):
    """A model a config names, resolved by the pipeline's one model resolver
    (``Pipeline.model_at``: directory, URL, ``.gguf``, ``pkg:``): its digest now, its local
    Hugging Face directory when loaded (a GGUF file is imported then)."""

    @property
    def digest(self) -> str: ...

    def local_dir(self) -> Path: ...


@dataclass(frozen=True)
class _LocalModel:
    path: Path

    @property
    def digest(self) -> str:
        from grao_pipe.models import policy_digest

        return policy_digest(self.path)

    def local_dir(self) -> Path:
        return self.path


@dataclass(frozen=True)
class ScorerFiles:
    """The model and files a scorer reads."""

    model_ref: ModelRef | None = None  # reward model, or the local judge's model
    template: Path | None = None  # judge template (the bundled one when not configured)
    code: Path | None = None  # a function scorer's module file

    @property
    def model(self) -> Path | None:
        """The model's local directory (built on first use)."""
        return self.model_ref.local_dir() if self.model_ref is not None else None

    def digests(self) -> dict[str, str]:
        """Content digests: a file replaced in place under the same path or URL changes the
        rewards, so it changes the keys too."""
        from grao_pipe.storage import content_sha256

        out = {}
        if self.model_ref is not None:
            out["model"] = self.model_ref.digest
        if self.template is not None:
            out["template"] = content_sha256(self.template)
        if self.code is not None:
            out["code"] = content_sha256(self.code)
        return out


def scorer_files(cfg: ScorerConfig, resolve: Callable[[str], Path],
                 resolve_model: Callable[[str], ModelRef] | None = None) -> ScorerFiles:
    """The files ``cfg`` reads (``resolve``: the pipeline's input resolver; ``resolve_model``:
    its model resolver, the same for every model a config names; default: a local directory)."""
    def local_model(loc: str) -> ModelRef:
        return _LocalModel(resolve(loc))

    model = resolve_model or local_model
    if isinstance(cfg, RewardModelScorer):
        return ScorerFiles(model_ref=model(cfg.path))
    if isinstance(cfg, JudgeScorer):
        return ScorerFiles(model_ref=model(cfg.model) if cfg.backend == "hf" else None,
                           template=resolve(cfg.template) if cfg.template else bundled_template())
    if isinstance(cfg, FunctionScorer):
        from grao_pipe.scoring.function import module_file

        return ScorerFiles(code=module_file(cfg.function, f"score.scorers[{cfg.name}].function"))
    return ScorerFiles()


def bundled_template() -> Path:
    from importlib import resources

    return Path(str(resources.files("grao_pipe") / "data" / "judge_template.txt"))


def scorer_key(cfg: ScorerConfig, files: ScorerFiles) -> str:
    """Cache key of a scorer's raw rewards: its keyed config without the weight (the raw value
    does not depend on it), and the contents of the files it reads (a function's module, a
    judge's template and model, a reward model)."""
    section = {k: v for k, v in keyed(cfg).items() if k != "weight"}
    return digest({**section, "files": files.digests()})


def build(cfg: ScorerConfig, files: ScorerFiles) -> Scorer:
    if isinstance(cfg, FunctionScorer):
        from grao_pipe.scoring.function import FunctionScorerImpl

        return FunctionScorerImpl(cfg)
    if isinstance(cfg, JudgeScorer):
        from grao_pipe.scoring.judge import Judge

        return Judge(cfg, files)
    if isinstance(cfg, RewardModelScorer):
        from grao_pipe.scoring.reward_model import RewardModel

        assert files.model is not None
        return RewardModel(cfg, files.model)
    raise TypeError(type(cfg).__name__)
