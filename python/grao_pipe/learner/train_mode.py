"""The policy in training mode, without dropout.

transformers only runs activation checkpointing in training mode (``module.training``), so the
learner must call ``train()``. Training mode also switches dropout on, which would make the
learner's log-probs random: they would no longer equal the behaviour log-probs of the same
weights (importance weights, GRPO ratios, the staleness metric) nor be reproducible when a run
resumes. RL fine-tuning conventionally trains without dropout; every dropout the model has
(``nn.Dropout`` modules and the float rates attention layers read, such as
``attention_dropout``) is set to 0, so the losses equal those of evaluation mode.
"""

from __future__ import annotations

from torch import nn


def disable_dropout(model: nn.Module) -> int:
    """Set every dropout rate in ``model`` (modules, float attributes, config) to 0; return how
    many were non-zero."""
    changed = 0
    for module in model.modules():
        if isinstance(module, nn.modules.dropout._DropoutNd):
            changed += module.p != 0
            module.p = 0.0
        for name, value in list(vars(module).items()):
            if name.endswith("dropout") and isinstance(value, float):
                changed += value != 0
                setattr(module, name, 0.0)
    config = getattr(model, "config", None)
    for name, value in list(vars(config).items()) if config is not None else []:
        if name.endswith("dropout") and isinstance(value, float):  # read by modules built later
            setattr(config, name, 0.0)
    return changed


def prepare_for_training(model: nn.Module, activation_checkpointing: bool) -> nn.Module:
    """``model`` in training mode with dropout off, checkpointing its layers if asked."""
    disable_dropout(model)
    if activation_checkpointing:
        # transformers 5 renamed it; the old name is a deprecated alias there.
        enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
        enable()  # type: ignore[operator]
    model.train()
    return model
