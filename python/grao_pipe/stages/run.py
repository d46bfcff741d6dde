"""``grao-pipe run``: every stage of every round, skipping what is cached."""

from __future__ import annotations

from collections.abc import Callable

from grao_pipe.config import PipelineConfig
from grao_pipe.stages import generate, score, train
from grao_pipe.stages.common import Outcome

STAGE_RUNNERS: dict[str, Callable[[PipelineConfig, int, bool], Outcome]] = {
    "generate": generate.run,
    "score": score.run,
    "train": train.run,
}


def run(cfg: PipelineConfig, force: bool = False, on_outcome: Callable[[Outcome], None] | None = None) -> list[Outcome]:
    outcomes = []
    for round_ in range(1, cfg.run.rounds + 1):
        for fn in STAGE_RUNNERS.values():
            o = fn(cfg, round_, force)
            outcomes.append(o)
            if on_outcome is not None:
                on_outcome(o)
    return outcomes
