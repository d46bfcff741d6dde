"""The stage registry and graph: every verb, ``run``, ``status`` and ``datasets`` iterate
``STAGES``; ``plan`` orders them by their declared edges (``Stage.upstream``).

Stage modules import no heavy engine (torch, vLLM) at import time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from grao_pipe.config import PipelineConfig
from grao_pipe.stages.base import OnOutcome, Outcome, Stage
from grao_pipe.stages.evaluate import Eval
from grao_pipe.stages.generate import Generate
from grao_pipe.stages.score import Score
from grao_pipe.stages.train import Train

if TYPE_CHECKING:
    from grao_pipe.pipeline import Pipeline

STAGES: dict[str, Stage] = {s.name: s for s in (Generate(), Score(), Train(), Eval())}


def round_order() -> list[Stage]:
    """The stages of one round in dependency order (same-round edges come first)."""
    order: list[Stage] = []
    pending = list(STAGES.values())
    while pending:
        ready = [s for s in pending if all(e.offset != 0 or e.stage in {o.name for o in order} for e in s.upstream)]
        if not ready:
            raise RuntimeError(f"the stage graph has a cycle among {[s.name for s in pending]}")
        order += ready
        pending = [s for s in pending if s not in ready]
    return order


def plan(cfg: PipelineConfig, outside_rounds: bool = False) -> list[tuple[Stage, int]]:
    """What ``grao-pipe run`` does, in order: the stages of every round (``run.rounds``) in graph
    order, then those outside the round loop (eval) for the last round if ``run.<name>`` (or
    always, with ``outside_rounds``: what ``status`` lists)."""
    rounds = cfg.run.rounds
    steps = [(s, r) for r in range(1, rounds + 1) for s in round_order() if s.in_run]
    return steps + [(s, rounds) for s in round_order()
                    if not s.in_run and (outside_rounds or getattr(cfg.run, s.name, False))]


def run_stages(p: Pipeline, force: bool = False, on_outcome: OnOutcome | None = None) -> list[Outcome]:
    """Every step of ``plan``, skipping what is cached."""
    outcomes = []
    for stage, round_ in plan(p.cfg):
        o = stage.run(p, round_, force)
        outcomes.append(o)
        if on_outcome is not None:
            on_outcome(o)
    return outcomes
