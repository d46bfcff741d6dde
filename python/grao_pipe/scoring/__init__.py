"""Scorers: R(o, y), the reward of a response relative to the prompt's reference answer.

Kinds: ``function`` (Python), ``judge`` (comparative LLM judge, design §5), ``reward_model``
(scalar sequence classifier, R = r(o) - r(y)). Several combine with weights.
"""

from __future__ import annotations

from grao_pipe.config import FunctionScorer, JudgeScorer, RewardModelScorer, ScorerConfig
from grao_pipe.scoring.base import Scorer, ScoreResult
from grao_pipe.store import digest

__all__ = ["ScoreResult", "Scorer", "build", "scorer_key"]


def scorer_key(cfg: ScorerConfig) -> str:
    """Cache key of a scorer's raw rewards: its config without the weight (and without knobs
    that cannot change the values, like concurrency)."""
    dumped = cfg.model_dump(exclude={"weight", "concurrency", "timeout_s", "max_retries", "batch_size"})
    return digest(dumped)


def build(cfg: ScorerConfig) -> Scorer:
    if isinstance(cfg, FunctionScorer):
        from grao_pipe.scoring.function import FunctionScorerImpl

        return FunctionScorerImpl(cfg)
    if isinstance(cfg, JudgeScorer):
        from grao_pipe.scoring.judge import Judge

        return Judge(cfg)
    if isinstance(cfg, RewardModelScorer):
        from grao_pipe.scoring.reward_model import RewardModel

        return RewardModel(cfg)
    raise TypeError(type(cfg).__name__)
