"""Learner entry point, one process per device: ``torchrun ... -m grao_pipe.learner.worker SPEC``.

SPEC is a JSON file written by ``grao_pipe.stages.train``: score shards (with checksums), the
initial model directory, the train config section and the output directory. Rank 0 appends one
line per optimizer step to ``metrics.jsonl`` and writes the Hugging Face export ``model/``.
With ``train.checkpoint_every`` the run saves sharded checkpoints and, when restarted after a
crash, resumes from the latest one exactly (same data order, same optimizer state).
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from grao_pipe.config import TrainConfig
from grao_pipe.learner import attention, checkpoint
from grao_pipe.learner.data import GroupStore, StepLoader
from grao_pipe.learner.fsdp import shard_model
from grao_pipe.learner.logprobs import policy_state_dict
from grao_pipe.learner.metric_logging import make_loggers
from grao_pipe.learner.objectives import learner_model, step_loss, uses_rejected

# bf16 dense peak FLOP/s used for MFU, by device name substring.
PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12}


def _n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    cfg = TrainConfig.model_validate(spec["train"])
    out = Path(spec["output_dir"])
    use_cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if use_cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    torch.manual_seed(cfg.seed)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from grao_pipe.hf import quiet

    quiet()
    model_dir = spec["model_dir"]
    # local_files_only: the export's tokenizer_config.json must not depend on the environment.
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    if cfg.attn_implementation == attention.FLEX and not use_cuda:
        raise SystemExit("train: attn_implementation=flex_attention needs CUDA (torch has no flex-attention "
                         "backward on CPU); use train.attn_implementation=sdpa")
    lm = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, local_files_only=True,
                                              attn_implementation=cfg.attn_implementation)
    lm.to(device)  # type: ignore[arg-type]
    if cfg.activation_checkpointing:
        lm.gradient_checkpointing_enable()
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    n_params = _n_params(lm)
    # The FSDP root is the log-prob wrapper (same state-dict keys as the causal LM), so the LM
    # head and embeddings are unsharded by the root's hooks around the chunked head too.
    model = learner_model(lm, cfg)  # with PPO's value head for objective=ppo
    shard_model(model, device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / (cfg.warmup_steps + 1)))

    shards = [(Path(p), sha) for p, sha in spec["shards"]]
    cache_dir = out / "cache"
    if rank == 0:  # convert each shard once, then every rank memory-maps the same files
        cache_dir.mkdir(exist_ok=True)
        GroupStore(shards, cache_dir)
    dist.barrier()
    groups = GroupStore(shards, cache_dir, cfg.max_seq_len, cfg.overlong, rejected=uses_rejected(cfg))
    step_size = min(cfg.groups_per_step, len(groups))
    if step_size < world:
        raise SystemExit(f"train: {len(groups)} usable groups cannot feed {world} ranks; lower train.nproc")
    steps_per_epoch = len(groups) // step_size
    total_steps = steps_per_epoch * cfg.epochs
    ckpt_root = out / "checkpoints"
    ckpt_root.mkdir(exist_ok=True)

    start = 0
    last = checkpoint.latest(ckpt_root)
    if last is not None:
        extra = checkpoint.load(last, model, opt, {"step": 0, "spec_digest": ""})
        if extra["spec_digest"] != spec["spec_digest"]:
            raise SystemExit(f"train: refusing to resume from {last}: it was written for other data or another "
                             "model (spec digest differs); delete the checkpoint directory to start over")
        start = int(extra["step"])
        sched.last_epoch = start - 1
        sched.step()  # restore the LR of step `start`
    # Resumed: what was logged after the checkpoint's step is dropped (JSONL, TensorBoard).
    loggers = make_loggers(cfg.logging, out, spec["run_id"], spec["train"], start) if rank == 0 else None

    peak = next((v for k, v in PEAK_FLOPS.items() if use_cuda and k in torch.cuda.get_device_name()), None)
    fail_at = int(os.environ.get("GRAO_PIPE_KILL_AT_STEP", -1))  # fault injection for the resume test
    loader = StepLoader(groups, seed=cfg.seed, step_size=step_size, rank=rank, world=world, pad_id=pad_id,
                        micro_batch_tokens=cfg.micro_batch_tokens, pack_tokens=cfg.pack_tokens, start=start,
                        stop=total_steps)
    for step in range(start, total_steps):
        epoch = step // steps_per_epoch
        t0 = time.perf_counter()
        data = next(loader)  # built ahead in the loader's thread
        micro = data.micro
        # Every rank must run the same number of forwards (FSDP all-gathers in each one).
        n_micro = torch.tensor([len(micro)], device=device)
        dist.all_reduce(n_micro, op=dist.ReduceOp.MAX)
        loss_sum = 0.0
        term_sums: dict[str, float] = {}
        diag_sums: dict[str, float] = {}
        real_tokens = padded_tokens = 0
        for i in range(int(n_micro)):
            dummy = i >= len(micro)  # this rank ran out: a zero-weight forward keeps ranks in step
            batch, packed = loader.filler(data) if dummy else micro[i]
            loss_B, terms, diag = step_loss(model, batch, cfg, device, packed)
            model.set_requires_gradient_sync(i == int(n_micro) - 1)  # type: ignore[operator]
            # Mean over the step's groups: FSDP averages gradients over ranks, hence * world.
            (loss_B.sum() * (0.0 if dummy else world / step_size)).backward()
            if dummy:
                continue
            loss_sum += float(loss_B.detach().sum())
            for k, v in terms.items():
                term_sums[k] = term_sums.get(k, 0.0) + float(v.detach().sum())
            for k, d in diag.items():
                diag_sums[k] = diag_sums.get(k, 0.0) + d / len(micro)
            real_tokens += packed.real_tokens if packed else batch.real_tokens
            padded_tokens += packed.padded_tokens if packed else batch.padded_tokens
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        names = sorted(term_sums)
        red = torch.tensor([loss_sum, *[term_sums[k] for k in names], float(real_tokens), float(padded_tokens),
                            *[diag_sums[k] / world for k in sorted(diag_sums)]], device=device)
        dist.all_reduce(red)
        if use_cuda:
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        if rank == 0:
            vals = red.tolist()
            nt = len(names)
            real, padded = vals[1 + nt], vals[2 + nt]
            rec: dict[str, Any] = {
                "step": step, "epoch": epoch, "loss": vals[0] / step_size,
                **{f"loss_{k}": v / step_size for k, v in zip(names, vals[1 : 1 + nt], strict=True)},
                **dict(zip(sorted(diag_sums), vals[3 + nt :], strict=True)),
                "grad_norm": float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm),
                "lr": sched.get_last_lr()[0], "groups": step_size, "real_tokens": int(real),
                "padding_fraction": 1 - real / max(padded, 1), "tokens_per_s": real / dt,
                "data_wait_fraction": data.wait_s / dt,  # rank 0's time waiting for its batches
                # 6·N·tokens training FLOPs (attention excluded) over the peak of all devices.
                "mfu": 6 * n_params * real / dt / (peak * world) if peak else None,
            }
            if not all(math.isfinite(v) for v in vals):
                raise FloatingPointError(f"non-finite loss at step {step}: {rec}")
            assert loggers is not None
            loggers.log(step, rec)
        done = step + 1
        if cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < total_steps:
            checkpoint.save(ckpt_root, done, model, opt, {"step": done, "spec_digest": spec["spec_digest"]})
        if done == fail_at:
            os.kill(os.getpid(), signal.SIGKILL)

    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    checkpoint.save(ckpt_root, total_steps, model, opt, {"step": total_steps, "spec_digest": spec["spec_digest"]})
    # Each rank counted truncations/skips of the groups it materialised.
    counts = torch.tensor([groups.stats.truncated, groups.stats.skipped], device=device)
    dist.all_reduce(counts)
    load_stats = {"rows": groups.stats.rows, "truncated": int(counts[0]), "skipped": int(counts[1])}
    if loggers is not None:
        loggers.close()
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank == 0:
        # Eager attention: the export only holds weights (config.json does not record the kernel).
        export = AutoModelForCausalLM.from_config(model.config, dtype=torch.float32, attn_implementation="eager")
        export.load_state_dict(policy_state_dict(full))  # learner-only heads stay out
        # Files under 5 GB: object stores copy an upload to its final key in one request, and
        # S3 caps single copies at 5 GiB (grao_pipe.remote).
        export.save_pretrained(out / "model", max_shard_size="4GB")
        tokenizer.save_pretrained(out / "model")
        (out / "load_stats.json").write_text(json.dumps(load_stats))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
    # Everything is written and the process group is gone. Skip interpreter teardown: a gloo
    # worker thread destroyed during static destruction occasionally aborts the process
    # ("terminate called without an active exception") after a fully successful run.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
