"""GRPO with token-level normalisation: the loss is a sum over every sampled token of the
optimizer step, divided by a step-wide constant, instead of a mean per sequence then per group.
Long responses then weigh in proportion to their length, which removes GRPO's length bias.

``loss_type`` names follow TRL's GRPOConfig:
- ``dapo`` (Yu et al. 2025, DAPO, Eq. 8): Σ_i Σ_t ℓ_i,t / Σ_i |o_i| over the step's samples;
- ``dr_grpo`` (Liu et al. 2025, Dr. GRPO, Eq. 3 with a constant normaliser): Σ_i Σ_t ℓ_i,t /
  (N · L), N the step's samples and L = ``max_completion_tokens``, so the scale depends on no
  length at all.
with ℓ_i,t = −min(r_t Â_i, clip(r_t, 1 − ε_low, 1 + ε_high) Â_i) + β_KL·D_KL,t, r_t = πθ/π_old
and the k3 estimator D_KL,t as in GRPO. "The step" is every rank's every micro-batch
(``StepTensors.totals``), so gradient accumulation and the number of ranks change nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field, model_validator

from grao_pipe.learner.objectives.base import Needs, Objective, StepOut
from grao_pipe.learner.objectives.grpo import policy_needs
from grao_pipe.sections import Section

if TYPE_CHECKING:
    import torch

    from grao_pipe.learner.step import StepTensors


class TokenGRPOSettings(Section):
    loss_type: Literal["dapo", "dr_grpo"] = "dapo"
    clip: float | None = Field(0.2, gt=0, description="ε_low: ratio clip vs behaviour log-probs; null: none")
    # DAPO's clip-higher: a larger upper bound lets unlikely tokens with Â > 0 grow (0.28 in
    # the DAPO paper); null: the same as ``clip``.
    clip_high: float | None = Field(None, gt=0)
    kl: float = Field(0.0, ge=0, description="KL coefficient to the reference model (k3 estimator)")
    # dr_grpo's L: the generation cap (generate.max_new_tokens) in the paper and in TRL.
    max_completion_tokens: int | None = Field(None, gt=0)
    advantages: Literal["samples_only", "score"] = "samples_only"

    @model_validator(mode="after")
    def _dr_grpo_constant(self) -> TokenGRPOSettings:
        if self.loss_type == "dr_grpo" and self.max_completion_tokens is None:
            raise ValueError("train.token_grpo.loss_type=dr_grpo divides by a constant length: set "
                             "train.token_grpo.max_completion_tokens (usually generate.max_new_tokens)")
        if self.clip is None and self.clip_high is not None:
            raise ValueError("train.token_grpo.clip_high needs train.token_grpo.clip (the lower bound)")
        return self


def token_sum_loss(token_logps_NT: torch.Tensor, behaviour_NT: torch.Tensor, ref_NT: torch.Tensor | None,
                   adv_N: torch.Tensor, mask_NT: torch.Tensor, group_of_N: torch.Tensor, n_groups: int,
                   normaliser: float, clip_low: float | None, clip_high: float | None, kl_coef: float = 0.0,
                   ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per group b: Σ_{i ∈ b} Σ_t ℓ_i,t / ``normaliser`` (module docstring), [n_groups], and its
    terms ``policy`` and ``kl``. Summed over the step's groups this is the DAPO / Dr. GRPO loss
    when ``normaliser`` is the step's Σ|o_i| / N·L."""
    import torch

    mask = mask_NT.to(token_logps_NT.dtype)
    ratio_NT = torch.exp(token_logps_NT - behaviour_NT)
    surrogate_NT = ratio_NT * adv_N[:, None]
    if clip_low is not None:
        high = clip_low if clip_high is None else clip_high
        surrogate_NT = torch.minimum(surrogate_NT, ratio_NT.clamp(1 - clip_low, 1 + high) * adv_N[:, None])
    policy_N = -(surrogate_NT * mask).sum(-1) / normaliser
    kl_N = torch.zeros_like(policy_N)
    if ref_NT is not None and kl_coef > 0:
        d_NT = ref_NT - token_logps_NT
        kl_N = kl_coef * ((torch.exp(d_NT) - d_NT - 1) * mask).sum(-1) / normaliser
    per_group = lambda x_N: torch.zeros(n_groups, dtype=x_N.dtype, device=x_N.device).index_add(0, group_of_N, x_N)  # noqa: E731
    policy_B, kl_B = per_group(policy_N), per_group(kl_N)
    return policy_B + kl_B, {"policy": policy_B, "kl": kl_B}


class TokenGRPO(Objective[TokenGRPOSettings]):
    name = "token_grpo"
    settings = TokenGRPOSettings

    def needs(self, s: TokenGRPOSettings) -> Needs:
        return policy_needs(s.clip, s.kl, s.advantages, key="train.token_grpo")

    def loss(self, step: StepTensors, s: TokenGRPOSettings) -> StepOut:
        keep = step.valid_N
        mask_NT = step.mask_NT[: step.ns][keep]
        # Without step totals (a micro-batch used on its own), this micro-batch is the step.
        groups = step.totals.groups if step.totals else step.b
        if s.loss_type == "dapo":
            tokens = step.totals.sample_tokens if step.totals else int(mask_NT.sum())
            normaliser = float(max(tokens, 1))
        else:
            samples = step.totals.samples if step.totals else int(keep.sum())
            normaliser = float(max(samples, 1) * (s.max_completion_tokens or 1))
        ref_NT = step.ref_NT[: step.ns][keep] if s.kl > 0 else None
        loss_B, terms = token_sum_loss(step.tok_NT[: step.ns][keep], step.behaviour_NT[: step.ns][keep], ref_NT,
                                       step.adv_BG.reshape(-1)[keep], mask_NT, step.group_of_N[keep], step.b,
                                       normaliser, s.clip, s.clip_high, s.kl)
        # The recipe averages per-group losses over the step's groups: scale the sums back.
        return loss_B * groups, {k: v * groups for k, v in terms.items()}, {"staleness_kl": step.staleness()}


OBJECTIVE = TokenGRPO()
