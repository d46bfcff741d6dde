"""Sharded checkpoints with torch.distributed.checkpoint: model, optimizer, RNG and the step (the
loader cursor: data order is a pure function of seed and epoch).

A checkpoint is written under a temporary name and renamed when every rank has finished, so only
complete checkpoints are resumed from. Its ``.metadata`` is a pickle, so a checkpoint is loaded
only if this machine's user wrote it: rank 0 seals each one with an HMAC of its files' sha256s
under a key kept in the user's cache (``$GRAO_PIPE_CACHE/checkpoint.key``, mode 0600), and
verifies the seal before anything is unpickled. A checkpoint planted in a shared workdir, or
written elsewhere, has no valid seal: it is deleted with a warning and training starts from the
newest trusted one (or from scratch). Checkpoints are resume state, never published.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import secrets
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from grao_pipe.schemas import tmp_name

PREFIX = "step-"
SEAL = ".grao-seal"


def _key() -> bytes:
    root = Path(os.environ.get("GRAO_PIPE_CACHE") or Path.home() / ".cache" / "grao-pipe")
    path = root / "checkpoint.key"
    if not path.is_file():
        root.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(tmp_name(path.name))
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(32))
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)  # first writer wins; a concurrent one reads the winner's key
        tmp.unlink()
    return path.read_bytes()


def _fingerprint(directory: Path) -> bytes:
    """sha256 of every file of a checkpoint (but the seal), in a stable order."""
    entries = []
    for p in sorted(directory.rglob("*")):
        if p.is_file() and p.name != SEAL:
            entries.append([p.relative_to(directory).as_posix(), hashlib.sha256(p.read_bytes()).hexdigest()])
    return json.dumps(entries).encode()


def seal(directory: Path) -> None:
    (directory / SEAL).write_text(hmac.new(_key(), _fingerprint(directory), hashlib.sha256).hexdigest())


def is_trusted(directory: Path) -> bool:
    path = directory / SEAL
    if not path.is_file():
        return False
    want = hmac.new(_key(), _fingerprint(directory), hashlib.sha256).hexdigest()
    return hmac.compare_digest(path.read_text().strip(), want)


def _steps(root: Path) -> list[Path]:
    found = [p for p in root.glob(f"{PREFIX}*") if p.is_dir() and p.name[len(PREFIX):].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def latest_trusted(root: Path) -> Path | None:
    """The newest checkpoint this user sealed (rank 0 decides, every rank gets the answer).
    Untrusted ones are deleted: never unpickled, never resumed from."""
    choice: list[str | None] = [None]
    if dist.get_rank() == 0:
        for p in reversed(_steps(root)):
            if is_trusted(p):
                choice[0] = str(p)
                break
            print(f"train: ignoring checkpoint {p}: it was not written by this user's runs on this machine "
                  "(no valid seal); deleting it", file=sys.stderr)
            shutil.rmtree(p, ignore_errors=True)
    dist.broadcast_object_list(choice, src=0)  # a path string only: nothing of the checkpoint
    return Path(choice[0]) if choice[0] else None


def exists(root: Path, step: int) -> bool:
    return (root / f"{PREFIX}{step}").is_dir()


def _options(model: torch.nn.Module) -> StateDictOptions:
    """A model with frozen parameters (a LoRA base) checkpoints only its trainable ones: the
    frozen ones are re-read from the base model on resume."""
    frozen = any(not p.requires_grad for p in model.parameters())
    return StateDictOptions(ignore_frozen_params=frozen, strict=not frozen)


def _model_state(model: torch.nn.Module, opts: StateDictOptions) -> dict[str, Any]:
    state = get_model_state_dict(model, options=opts)
    if opts.ignore_frozen_params:  # a tied, frozen LM head survives that option (the key of a shared tensor)
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        state = {k: v for k, v in state.items() if k in trainable}
    return state


def save(root: Path, step: int, model: torch.nn.Module, opt: torch.optim.Optimizer, extra: dict[str, Any],
         keep_last: int = 1) -> None:
    """Write ``step-<step>`` (all ranks), seal it, keep the newest ``keep_last``."""
    tmp = root / f".tmp-{PREFIX}{step}"
    opts = _options(model)
    state = {"model": _model_state(model, opts), "optim": get_optimizer_state_dict(model, opt, options=opts),
             "extra": {**extra, "rng": torch.get_rng_state()}}
    if dist.get_rank() == 0:
        shutil.rmtree(tmp, ignore_errors=True)  # a crashed attempt's leftovers
    dist.barrier()
    dcp.save(state, checkpoint_id=str(tmp))
    dist.barrier()
    if dist.get_rank() == 0:
        final = root / f"{PREFIX}{step}"
        seal(tmp)
        shutil.rmtree(final, ignore_errors=True)  # an older copy of the same step (never the case today)
        tmp.rename(final)
        for old in _steps(root)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    dist.barrier()


def load(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, template: dict[str, Any]) -> dict[str, Any]:
    """Restore a trusted checkpoint in place; ``template`` names the (flat, primitive) extra keys."""
    opts = _options(model)
    state: dict[str, Any] = {"model": _model_state(model, opts),
                             "optim": get_optimizer_state_dict(model, opt, options=opts),
                             "extra": {**template, "rng": torch.get_rng_state()}}
    dcp.load(state, checkpoint_id=str(path))
    set_model_state_dict(model, state["model"], options=opts)
    set_optimizer_state_dict(model, opt, state["optim"], options=opts)
    extra: dict[str, Any] = dict(state["extra"])
    torch.set_rng_state(extra.pop("rng"))
    return extra
