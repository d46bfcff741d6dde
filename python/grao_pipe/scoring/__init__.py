"""Scorers: R(o, y), the reward of a response relative to the prompt's reference answer.

Kinds: ``function`` (Python), ``judge`` (comparative LLM judge, design §5), ``reward_model``
(scalar sequence classifier, R = r(o) - r(y)). Several combine with weights.
"""

from __future__ import annotations

from grao_pipe.config import FunctionScorer, JudgeScorer, RewardModelScorer, ScorerConfig
from grao_pipe.scoring.base import Scorer, ScoreResult
from grao_pipe.store import digest

__all__ = ["ScoreResult", "Scorer", "build", "scorer_files", "scorer_key"]


# Bumped when a scorer kind reads its inputs differently. 2: judges and reward models read the
# prompt's dialogue (plain turns / their own chat template), not the policy's rendering.
INPUT_VERSIONS = {"judge": 2, "reward_model": 2}


def scorer_files(cfg: ScorerConfig) -> dict[str, str]:
    """Content digests of the files a scorer reads (model weights, judge template): one replaced
    in place under the same path or URL changes the rewards, so it must change the keys too."""
    from grao_pipe.models import policy_digest
    from grao_pipe.remote import local_input
    from grao_pipe.store import content_sha256

    files = {}
    if isinstance(cfg, RewardModelScorer):
        files["model"] = policy_digest(local_input(cfg.path))
    if isinstance(cfg, JudgeScorer) and cfg.backend == "hf":
        files["model"] = policy_digest(local_input(cfg.model))
    if isinstance(cfg, JudgeScorer) and cfg.template:
        files["template"] = content_sha256(local_input(cfg.template))
    return files


def scorer_key(cfg: ScorerConfig) -> str:
    """Cache key of a scorer's raw rewards: its config without the weight (and without knobs
    that cannot change the values, like concurrency), and the contents of the files it reads."""
    dumped = cfg.model_dump(exclude={"weight", "concurrency", "timeout_s", "max_retries", "batch_size"})
    if cfg.kind in INPUT_VERSIONS:  # what the scorer reads changed: rewards cached before are stale
        dumped["input_version"] = INPUT_VERSIONS[cfg.kind]
    files = scorer_files(cfg)
    return digest({**dumped, "files": files} if files else dumped)


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
