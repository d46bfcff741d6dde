"""SFT baseline: the negative length-normalised log-likelihood of the reference answer."""

from __future__ import annotations

from typing import TYPE_CHECKING

from grao_pipe.learner.objectives.base import Needs, Objective, StepOut
from grao_pipe.sections import Section

if TYPE_CHECKING:
    from grao_pipe.learner.step import StepTensors


class SFTSettings(Section):
    pass


class SFT(Objective[SFTSettings]):
    name = "sft"
    settings = SFTSettings

    def needs(self, s: SFTSettings) -> Needs:
        return Needs()

    def loss(self, step: StepTensors, s: SFTSettings) -> StepOut:
        from grao_pipe import losses

        j_im_B = losses.sequence_mean_logps(step.tok_NT[step.refs], step.mask_NT[step.refs])
        return (*step.weighted(*losses.sft_loss(j_im_B), step.fits_B), {})


OBJECTIVE = SFT()
