"""The stage registry: every verb, ``run``, ``status`` and ``datasets`` iterate ``STAGES``.

Order is pipeline order. Stage modules import no heavy engine (torch, vLLM) at import time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from grao_pipe.stages.base import OnOutcome, Outcome, Stage
from grao_pipe.stages.evaluate import Eval
from grao_pipe.stages.generate import Generate
from grao_pipe.stages.score import Score
from grao_pipe.stages.train import Train

if TYPE_CHECKING:
    from grao_pipe.pipeline import Pipeline

STAGES: dict[str, Stage] = {s.name: s for s in (Generate(), Score(), Train(), Eval())}


def run_stages(p: Pipeline, force: bool = False, on_outcome: OnOutcome | None = None) -> list[Outcome]:
    """Every stage of every round (``run.rounds``), then eval of the last round if ``run.eval``."""
    plan = [(s, r) for r in range(1, p.cfg.run.rounds + 1) for s in STAGES.values() if s.in_run]
    if p.cfg.run.eval:
        plan.append((STAGES["eval"], p.cfg.run.rounds))
    outcomes = []
    for stage, round_ in plan:
        o = stage.run(p, round_, force)
        outcomes.append(o)
        if on_outcome is not None:
            on_outcome(o)
    return outcomes
