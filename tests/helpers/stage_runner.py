"""Run stages in-process, as the CLI does (one Pipeline per call, like one CLI invocation)."""

from __future__ import annotations

from pathlib import Path

from grao_pipe.config import PipelineConfig
from grao_pipe.pipeline import Pipeline
from grao_pipe.stages.base import Outcome


def run_stage(stage: str, cfg: PipelineConfig, round_: int = 1, force: bool = False,
              part: tuple[int, int] = (0, 1)) -> Outcome:
    return Pipeline(cfg).run_stage(stage, round_, force, part)


def stage_dir(stage: str, cfg: PipelineConfig, round_: int = 1) -> Path:
    """Where ``stage`` writes for ``cfg`` (its inputs must be finished)."""
    return Pipeline(cfg).target(stage, round_).dir.path
