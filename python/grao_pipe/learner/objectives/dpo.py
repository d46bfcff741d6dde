"""DPO baseline (Rafailov et al. 2023) on pairs (chosen = the reference answer, rejected = the
dataset's rejected answer, or the group's worst sample), against reference-model log-probs
that the score stage precomputes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field

from grao_pipe.learner.objectives.base import REFERENCE_LOGPROBS_HINT, Needs, Objective, StepOut
from grao_pipe.sections import Section

if TYPE_CHECKING:
    from grao_pipe.learner.step import StepTensors


class DPOSettings(Section):
    beta: float = Field(0.1, gt=0)
    # ``dataset`` = (chosen = the reference, rejected = the dataset's rejected answer);
    # ``samples`` = (the reference, the group's worst sample) only where that sample is strictly
    # worse than the reference (reward < 0); other groups give no pair.
    pairs: Literal["dataset", "samples"] = "dataset"


class DPO(Objective[DPOSettings]):
    name = "dpo"
    settings = DPOSettings
    moved: ClassVar[Mapping[str, str]] = {"dpo_beta": "beta", "dpo_pairs": "pairs"}

    def needs(self, s: DPOSettings) -> Needs:
        ref = REFERENCE_LOGPROBS_HINT
        if s.pairs == "samples":
            return Needs(reference_logprobs=True, columns={"ref_logprobs": ref, "ref_reference_logprobs": ref})
        pairs_hint = "use a prompt set with a rejected answer per row (data.rejected_field), or train.dpo.pairs=samples"
        return Needs(reference_logprobs=True, rejected=True, columns={
            "reference_rejected_token_ids": pairs_hint, "ref_reference_logprobs": ref,
            "ref_reference_rejected_logprobs": ref})

    def loss(self, step: StepTensors, s: DPOSettings) -> StepOut:
        import torch

        from grao_pipe import losses

        sum_N, ref_sum_N = step.sums(), step.ref_sums()
        chosen = torch.arange(step.ns, step.ns + step.b, device=sum_N.device)
        if s.pairs == "dataset":
            if step.rejected is None:
                raise ValueError("train.dpo.pairs=dataset: the batch has no rejected answers (GroupStore(rejected=True))")
            rejected = chosen + step.b
            pair_B = step.rejected_B
        else:
            # The group's worst sample (lowest reward, first on ties), only if the judge rated it
            # strictly worse than the reference: a sample that beat or tied y is no "rejected".
            reward_BG = step.reward_BG + (1 - step.mask_BG) * 1e9
            worst_B = reward_BG.argmin(-1)
            rejected = torch.arange(step.b, device=sum_N.device) * step.g + worst_B
            pair_B = (reward_BG.gather(1, worst_B[:, None])[:, 0] < 0).to(sum_N.dtype)
        pair_B = pair_B * step.fits_B
        loss_B, terms = losses.dpo_loss(sum_N[chosen], sum_N[rejected], ref_sum_N[chosen], ref_sum_N[rejected], s.beta)
        return (*step.weighted(loss_B, terms, pair_B), {"dpo_pair_share": float(pair_B.mean())})


OBJECTIVE = DPO()
