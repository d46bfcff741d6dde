"""GRPO baseline (Shao et al. 2024): the clipped surrogate on group-normalised advantages, with
an optional KL penalty to the reference model."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field

from grao_pipe.learner.objectives.base import (
    BEHAVIOUR_HINT,
    REFERENCE_LOGPROBS_HINT,
    Needs,
    Objective,
    StepOut,
)
from grao_pipe.sections import Section

if TYPE_CHECKING:
    from grao_pipe.learner.step import StepTensors


class GRPOSettings(Section):
    clip: float | None = Field(0.2, gt=0, description="ratio clip ε vs behaviour log-probs; null: none")
    kl: float = Field(0.0, ge=0, description="KL coefficient to the reference model (k3 estimator)")
    # GRPO normalises over the group's samples alone (the paper's definition); ``score`` reads
    # the advantages of score.advantage.mode instead (e.g. with the reference in the group).
    advantages: Literal["samples_only", "score"] = "samples_only"


def policy_needs(clip: float | None, kl: float, advantages: str, min_group_size: int = 2, *,
                 key: str) -> Needs:
    """What a clipped policy-gradient objective on group advantages reads (GRPO and the
    token-level variants): behaviour log-probs to clip against, reference log-probs for the KL."""
    columns: dict[str, str] = {}
    if kl > 0:
        columns["ref_logprobs"] = REFERENCE_LOGPROBS_HINT
    if clip is not None:
        # Without clipping the ratio is taken against stop_grad(πθ): the on-policy surrogate,
        # which ignores how far the stored samples are from the current policy.
        columns["behaviour_logprobs"] = (f"{BEHAVIOUR_HINT}, or set {key}.clip=null for the unclipped on-policy "
                                         "surrogate (no correction for stale rollouts)")
    return Needs(min_group_size=min_group_size, reference_logprobs=kl > 0, columns=columns,
                 advantage_mode=None if advantages == "score" else advantages)


class GRPO(Objective[GRPOSettings]):
    name = "grpo"
    settings = GRPOSettings
    moved: ClassVar[Mapping[str, str]] = {"grpo_clip": "clip", "grpo_kl": "kl"}

    def needs(self, s: GRPOSettings) -> Needs:
        return policy_needs(s.clip, s.kl, s.advantages, key="train.grpo")

    def loss(self, step: StepTensors, s: GRPOSettings) -> StepOut:
        from grao_pipe import losses

        keep = step.valid_N
        ref_NT = step.ref_NT[: step.ns][keep] if s.kl > 0 else None
        adv_N = step.adv_BG.reshape(-1)
        loss_B, terms = losses.grpo_loss(step.tok_NT[: step.ns][keep], step.behaviour_NT[: step.ns][keep], ref_NT,
                                         adv_N[keep], step.mask_NT[: step.ns][keep], step.group_of_N[keep], step.b,
                                         s.clip, s.kl)
        return loss_B, terms, {"staleness_kl": step.staleness()}


OBJECTIVE = GRPO()
