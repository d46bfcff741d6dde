"""The registry of training objectives (``train.objective``): one line per objective.

Each objective is one module of this package defining ``OBJECTIVE`` (a ``base.Objective``): it
owns its config section ``train.<name>``, declares what it reads from the data
(``base.Needs``), and carries its loss adapter. The config, the score and train stages and the
learner ask the registry; nothing outside this package names an objective. Importing it does
not import torch. To add an objective: write its module, add its name below.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from grao_pipe.learner.objectives.base import Configured, Needs, Objective, StepOut

_MODULES = (
    "grao",
    "sft",
    "dpo",
    "grpo",
    "ppo",
    "token_grpo",
)

DEFAULT = "grao"  # the paper's objective, what train.objective defaults to

OBJECTIVES: dict[str, Objective[Any]] = {o.name: o for o in (import_module(f"{__name__}.{m}").OBJECTIVE
                                                            for m in _MODULES)}

# Flat ``train.*`` keys of earlier releases -> where they live now (``<objective>.<key>``).
MOVED: dict[str, str] = {old: f"{o.name}.{new}" for o in OBJECTIVES.values() for old, new in o.moved.items()}

__all__ = ["DEFAULT", "MOVED", "OBJECTIVES", "Configured", "Needs", "Objective", "StepOut"]
