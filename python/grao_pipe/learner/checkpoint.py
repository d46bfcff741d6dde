"""Sharded checkpoints with torch.distributed.checkpoint: model, optimizer, scheduler, RNG and
the loader cursor. A checkpoint is written under a temporary name and renamed when every rank
has finished, so only complete checkpoints are ever resumed from."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

PREFIX = "step-"


def latest(root: Path) -> Path | None:
    done = sorted(root.glob(f"{PREFIX}*"), key=lambda p: int(p.name[len(PREFIX) :]))
    return done[-1] if done else None


def save(root: Path, step: int, model: torch.nn.Module, opt: torch.optim.Optimizer, extra: dict[str, Any]) -> None:
    tmp = root / f".tmp-{PREFIX}{step}"
    state = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt),
             "extra": {**extra, "rng": torch.get_rng_state()}}
    dcp.save(state, checkpoint_id=str(tmp))
    dist.barrier()
    if dist.get_rank() == 0:
        final = root / f"{PREFIX}{step}"
        tmp.rename(final)
        for old in root.glob(f"{PREFIX}*"):
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
    dist.barrier()


def load(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, template: dict[str, Any]) -> dict[str, Any]:
    """Restore in place; ``template`` names the (flat, primitive) extra keys to read back."""
    state: dict[str, Any] = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt),
                             "extra": {**template, "rng": torch.get_rng_state()}}
    dcp.load(state, checkpoint_id=str(path))
    set_model_state_dict(model, state["model"])
    set_optimizer_state_dict(model, opt, state["optim"])
    extra: dict[str, Any] = dict(state["extra"])
    torch.set_rng_state(extra.pop("rng"))
    return extra
