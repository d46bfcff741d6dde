"""PPO baseline from the stored rollouts (Ouyang et al. 2022): a value head on the policy's
backbone, GAE on the terminal reward R(o, y) with a per-token KL penalty to the reference
model folded into the reward."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, ClassVar

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


class PPOSettings(Section):
    clip: float = Field(0.2, gt=0, description="policy ratio clip ε vs behaviour log-probs")
    value_clip: float | None = Field(0.2, gt=0, description="value clip vs the values before the update; null: none")
    vf_coef: float = Field(0.1, ge=0, description="weight of the value loss")
    gae_lambda: float = Field(0.95, ge=0, le=1)
    gamma: float = Field(1.0, ge=0, le=1)
    kl: float = Field(0.02, ge=0, description="per-token KL penalty coefficient in the reward (needs ref log-probs)")


class PPO(Objective[PPOSettings]):
    name = "ppo"
    settings = PPOSettings
    moved: ClassVar[Mapping[str, str]] = {"ppo_clip": "clip", "value_clip": "value_clip", "vf_coef": "vf_coef", "gae_lambda": "gae_lambda",
             "gamma": "gamma", "ppo_kl": "kl"}

    def needs(self, s: PPOSettings) -> Needs:
        columns = {"behaviour_logprobs": f"{BEHAVIOUR_HINT}: PPO's ratio is taken against them"}
        if s.kl > 0:
            columns["ref_logprobs"] = REFERENCE_LOGPROBS_HINT
        return Needs(reference_logprobs=s.kl > 0, columns=columns, value_head=True)

    def loss(self, step: StepTensors, s: PPOSettings) -> StepOut:
        import torch

        from grao_pipe import losses

        if step.values_NT is None:
            raise ValueError("train.objective=ppo needs the learner model with a value head (CausalLMLogpsValues)")
        keep = step.valid_N
        tok, beh, mask = step.tok_NT[: step.ns][keep], step.behaviour_NT[: step.ns][keep], step.mask_NT[: step.ns][keep]
        values = step.values_NT[: step.ns][keep]
        # Per-token KL penalty to the reference model, folded into the reward (a constant): log πθ −
        # log π_ref on the sampled tokens, with πθ the policy being trained (detached), as on-policy
        # RLHF-PPO computes it at rollout time. The stored behaviour policy is the reference itself
        # in round 1, so a penalty on it would vanish however far πθ moves.
        kl_NT = (tok.detach() - step.ref_NT[: step.ns][keep]) * mask if s.kl > 0 else torch.zeros_like(tok)
        rewards_NT = losses.ppo_token_rewards(step.reward_BG.reshape(-1)[keep], kl_NT, mask, s.kl)
        # The critic's values before this update are V_old: GAE and the value clip read them.
        old_values = values.detach()
        adv_NT, returns_NT = losses.gae(rewards_NT, old_values, mask, s.gamma, s.gae_lambda)
        loss_B, terms = losses.ppo_loss(tok, beh, losses.whiten(adv_NT, mask), values, old_values, returns_NT, mask,
                                        step.group_of_N[keep], step.b, s.clip, s.value_clip, s.vf_coef)
        m = mask.to(tok.dtype)
        diag = {"staleness_kl": step.staleness(), "ppo_kl": float((kl_NT * m).sum() / m.sum().clamp(min=1)),
                "value_mean": float((old_values * m).sum() / m.sum().clamp(min=1))}
        return loss_B, terms, diag


OBJECTIVE = PPO()
