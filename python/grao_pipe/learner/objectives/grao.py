"""GRAO (arXiv 2508.07750), design §2: exploration, imitation of the reference answer and the
alignment regulariser, on advantages normalised as ``score.advantage.mode`` says."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, ClassVar

from pydantic import Field

from grao_pipe.learner.objectives.base import BEHAVIOUR_HINT, Needs, Objective, StepOut
from grao_pipe.sections import Section

if TYPE_CHECKING:
    from grao_pipe.learner.step import StepTensors


class GRAOSettings(Section):
    beta: float = 0.5  # β, imitation
    lam: float = 0.6  # λ, alignment regulariser
    exploration: bool = True  # the exploration term (off: the ablation without it)
    # Beyond the paper, opt-in: every weight on J_im(y) is computed as if Â_y were
    # max(Â_y, floor); 0 = the reference's likelihood is never pushed down.
    reference_advantage_floor: float | None = None
    # Beyond the paper, opt-in: truncated importance weights vs the behaviour policy.
    importance_weights: bool = False
    importance_cap: float = Field(2.0, gt=0)


class GRAO(Objective[GRAOSettings]):
    name = "grao"
    settings = GRAOSettings
    moved: ClassVar[Mapping[str, str]] = {"beta": "beta", "lam": "lam", "exploration": "exploration",
             "reference_advantage_floor": "reference_advantage_floor",
             "importance_weights": "importance_weights", "importance_cap": "importance_cap"}

    def needs(self, s: GRAOSettings) -> Needs:
        columns = {"behaviour_logprobs": f"{BEHAVIOUR_HINT}, or set train.grao.importance_weights=false"} \
            if s.importance_weights else {}
        return Needs(min_group_size=2, columns=columns)

    def loss(self, step: StepTensors, s: GRAOSettings) -> StepOut:
        from grao_pipe import losses

        j_N = losses.sequence_mean_logps(step.tok_NT, step.mask_NT)
        j_exp_BG, j_im_B = j_N[: step.ns].view(step.b, step.g), j_N[step.refs]
        diag = {"staleness_kl": step.staleness()}
        weight_BG = None
        if s.importance_weights:
            sum_N = step.sums()[: step.ns]
            beh_N = (step.behaviour_NT[: step.ns] * step.mask_NT[: step.ns]).sum(-1)
            weight_BG = losses.truncated_importance_weights(sum_N, beh_N, s.importance_cap).view(step.b, step.g)
            diag["importance_weight_mean"] = float((weight_BG * step.mask_BG).sum() / step.mask_BG.sum().clamp(min=1))
        loss_B, terms = losses.grao_loss(j_exp_BG, j_im_B, step.adv_BG, step.ref_adv_B, step.mask_BG, beta=s.beta,
                                         lam=s.lam, weight_BG=weight_BG, alpha=1.0 if s.exploration else 0.0,
                                         ref_adv_floor=s.reference_advantage_floor)
        return (*step.weighted(loss_B, terms, step.fits_B), diag)


OBJECTIVE = GRAO()
