"""What a training objective is: a plug-in that owns its config section (``train.<name>``),
declares what it reads from the data, and carries its loss adapter.

Importing an objective module does not import torch: the config is built from the registry
(``grao_pipe.learner.objectives``) and must load without it. Loss adapters import torch when
they run, inside the learner.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from grao_pipe.sections import Section

if TYPE_CHECKING:
    import torch

    from grao_pipe.learner.step import StepTensors

# Per-group loss [B], its named terms [B] (they sum to the loss), and scalar diagnostics.
StepOut = tuple["torch.Tensor", dict[str, "torch.Tensor"], dict[str, float]]

REFERENCE_LOGPROBS_HINT = "re-run score: it computes reference-model log-probs for this objective"
BEHAVIOUR_HINT = ("generate with a backend that returns log-probs (hf, vllm; with generate.backend=import: "
                  "log-probs that align with the policy's tokens, or generate.import.recompute_logprobs=true)")


@dataclass(frozen=True)
class Needs:
    """What an objective reads from the data. The score stage computes it (advantages in
    ``advantage_mode``, reference-model log-probs); the train stage's pre-flight checks
    ``columns``; the learner loads ``rejected`` rows and builds a ``value_head``."""

    # Samples per prompt (G) below which the objective has nothing to learn from: 2 for
    # objectives that learn from the spread of rewards within a group.
    min_group_size: int = 1
    # The advantage normalisation whose ``advantage``/``reference_advantage`` columns the loss
    # reads: None for ``score.advantage.mode`` as configured, else a mode name that the score
    # stage then uses instead (and that enters its cache key).
    advantage_mode: str | None = None
    # Per-token log-probs of responses and references under the frozen reference model.
    reference_logprobs: bool = False
    # Columns that must be non-null in every kept row -> what to do when they are not.
    columns: Mapping[str, str] = field(default_factory=dict)
    # The dataset's rejected answers as B extra rows of every micro-batch.
    rejected: bool = False
    # A value head on the policy's backbone (a critic), trained with it.
    value_head: bool = False

    @property
    def group_relative(self) -> bool:
        return self.min_group_size >= 2


S = TypeVar("S", bound=Section)


class Objective(ABC, Generic[S]):
    """One training method. Subclasses set ``name``, ``settings`` (the pydantic section at
    ``train.<name>``) and ``moved`` (flat ``train.*`` keys of earlier releases that now live in
    the section), and implement ``needs`` and ``loss``."""

    name: ClassVar[str]
    settings: ClassVar[type[Section]]
    moved: ClassVar[Mapping[str, str]] = {}

    @abstractmethod
    def needs(self, s: S) -> Needs:
        """What this objective reads from the data, with settings ``s``."""

    @abstractmethod
    def loss(self, step: StepTensors, s: S) -> StepOut:
        """Per-group loss [B], its terms and diagnostics for one micro-batch."""


@dataclass(frozen=True)
class Configured:
    """An objective with its settings, as a train config selects them."""

    objective: Objective[Any]
    settings: Section

    @property
    def name(self) -> str:
        return self.objective.name

    @property
    def needs(self) -> Needs:
        return self.objective.needs(self.settings)

    def loss(self, step: StepTensors) -> StepOut:
        return self.objective.loss(step, self.settings)
