"""The learner as a recipe (torchtune's shape), read top to bottom: ``setup`` -> ``train`` (each
step: ``step`` -> ``log`` -> ``checkpoint``) -> ``export``.

One process per device under torchrun (``grao_pipe.learner.worker``). Each micro-batch's loss
is ``learner.step.step_loss``, the configured objective's (``learner.objectives``); FSDP2 wrapping is ``learner.fsdp``; batches come from the Rust
loader one step ahead (``learner.data.StepLoader``); metrics go to every configured logger
(``learner.metric_logging``); checkpoints are sealed and resumed exactly (``learner.checkpoint``).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from grao_pipe import progress
from grao_pipe.config import TrainConfig
from grao_pipe.faults import kill_point
from grao_pipe.learner import checkpoint, lora
from grao_pipe.learner.data import GroupStore, MicroBatch, Step, StepLoader
from grao_pipe.learner.fsdp import shard_model
from grao_pipe.learner.logprobs import policy_state_dict
from grao_pipe.learner.metric_logging import Loggers, make_loggers
from grao_pipe.learner.records import StepMetrics
from grao_pipe.learner.spec import LearnerSpec
from grao_pipe.learner.step import StepTotals, learner_model, sample_counts, step_loss
from grao_pipe.learner.train_mode import prepare_for_training

# bf16 dense peak FLOP/s used for MFU, by device name substring.
PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12}
EXPORT_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_policy(model_dir: str, cfg: TrainConfig, device: torch.device) -> torch.nn.Module:
    """The causal LM to train, fp32 on ``device``, in training mode (transformers checkpoints
    activations only in training mode) with dropout off (grao_pipe.learner.train_mode)."""
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, local_files_only=True,
                                              attn_implementation=cfg.attn_implementation)
    lm.to(device)  # type: ignore[arg-type]
    return prepare_for_training(lm, cfg.activation_checkpointing)


@dataclass
class StepResult:
    loss: float
    terms: dict[str, float]
    diag: dict[str, float]
    real_tokens: int
    padded_tokens: int
    grad_norm: float


class GRAORecipe:
    def __init__(self, spec: LearnerSpec):
        self.spec = spec
        self.cfg = spec.train
        self.out = spec.output_dir
        self.ckpt_root = self.out / "checkpoints"

    # ---- setup ----

    def setup(self) -> None:
        cfg = self.cfg
        self.use_cuda = torch.cuda.is_available()
        dist.init_process_group("nccl" if self.use_cuda else "gloo")
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.device = (torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if self.use_cuda
                       else torch.device("cpu"))
        if self.use_cuda:
            torch.cuda.set_device(self.device)
        torch.manual_seed(cfg.seed)

        from transformers import AutoTokenizer

        from grao_pipe.hf import quiet

        quiet()
        # local_files_only: the export's tokenizer_config.json must not depend on the environment.
        self.tokenizer = AutoTokenizer.from_pretrained(self.spec.model_dir, local_files_only=True)
        lm = load_policy(str(self.spec.model_dir), cfg, self.device)
        self.n_params = sum(p.numel() for p in lm.parameters())
        if cfg.lora is not None:  # adapters injected before sharding; the base frozen (learner.lora)
            lm = lora.apply(lm, cfg.lora, self.spec.adapter_dir)
        # The FSDP root is the log-prob wrapper (same state-dict keys as the causal LM), so the
        # LM head and embeddings are unsharded by the root's hooks around the chunked head too.
        self.model = learner_model(lm, cfg)  # with a value head if the objective trains a critic
        shard_model(self.model, self.device)
        self.opt = torch.optim.AdamW(lora.trainable(self.model), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: min(1.0, (s + 1) / (cfg.warmup_steps + 1)))

        # The stage converted the shards (checksums checked); every rank memory-maps them.
        self.groups = GroupStore(self.spec.shards, self.spec.cache_dir, cfg.max_seq_len, cfg.overlong,
                                 rejected=cfg.configured.needs.rejected)
        self.step_size = min(cfg.groups_per_step, len(self.groups))
        if self.step_size < self.world:
            raise ValueError(f"{len(self.groups)} usable groups cannot feed {self.world} ranks; lower train.nproc")
        self.steps_per_epoch = len(self.groups) // self.step_size
        self.total_steps = self.steps_per_epoch * cfg.epochs

        self.ckpt_root.mkdir(exist_ok=True)
        self.start = self._resume()
        self.loggers: Loggers | None = (make_loggers(cfg.logging, self.out, self.spec.run_id,
                                                     self.spec.train.model_dump(mode="json"), self.start)
                                        if self.rank == 0 else None)
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        self.loader = StepLoader(self.groups, seed=cfg.seed, step_size=self.step_size, rank=self.rank,
                                 world=self.world, pad_id=pad_id, micro_batch_tokens=cfg.micro_batch_tokens,
                                 pack_tokens=cfg.pack_tokens, start=self.start, stop=self.total_steps)
        name = torch.cuda.get_device_name() if self.use_cuda else ""
        self.peak_flops = next((v for k, v in PEAK_FLOPS.items() if k in name), None)

    def _resume(self) -> int:
        """The step to start from: that of the newest trusted checkpoint of this same spec."""
        last = checkpoint.latest_trusted(self.ckpt_root)
        if last is None:
            return 0
        extra = checkpoint.load(last, self.model, self.opt, {"step": 0, "spec_digest": ""})
        if extra["spec_digest"] != self.spec.spec_digest:
            raise ValueError(f"refusing to resume from {last}: it was written for other data or another model "
                             "(spec digest differs); delete the checkpoint directory to start over")
        start = int(extra["step"])
        self.sched.last_epoch = start - 1
        self.sched.step()  # restore the LR of step `start`
        return start

    # ---- train ----

    def train(self) -> None:
        for step in range(self.start, self.total_steps):
            t0 = time.perf_counter()
            data = next(self.loader)  # built ahead in the loader's thread
            result = self.step(data)
            if self.use_cuda:
                torch.cuda.synchronize()
            self.log(step, result, time.perf_counter() - t0, data.wait_s)
            kill_point(f"train.step:{step + 1}")
            self.checkpoint(step + 1)

    def step(self, data: Step) -> StepResult:
        """One optimizer step over this rank's share of the step's groups (micro-batches)."""
        model, world = self.model, self.world
        micro = data.micro
        # Every rank must run the same number of forwards (FSDP all-gathers in each one).
        n_micro_t = torch.tensor([len(micro)], device=self.device)
        dist.all_reduce(n_micro_t, op=dist.ReduceOp.MAX)
        n_micro = int(n_micro_t)
        totals = self._totals(micro)
        loss_sum = 0.0
        term_sums: dict[str, float] = {}
        diag_sums: dict[str, float] = {}
        real_tokens = padded_tokens = 0
        for i in range(n_micro):
            dummy = i >= len(micro)  # this rank ran out: a zero-weight forward keeps ranks in step
            batch, packed = self.loader.filler(data) if dummy else micro[i]
            loss_B, terms, diag = step_loss(model, batch, self.cfg, self.device, packed, totals)
            model.set_requires_gradient_sync(i == n_micro - 1)  # type: ignore[operator]
            # Mean over the step's groups: FSDP averages gradients over ranks, hence * world.
            (loss_B.sum() * (0.0 if dummy else world / self.step_size)).backward()
            if dummy:
                continue
            loss_sum += float(loss_B.detach().sum())
            for k, v in terms.items():
                term_sums[k] = term_sums.get(k, 0.0) + float(v.detach().sum())
            for k, d in diag.items():
                diag_sums[k] = diag_sums.get(k, 0.0) + d / len(micro)
            real_tokens += packed.real_tokens if packed else batch.real_tokens
            padded_tokens += packed.padded_tokens if packed else batch.padded_tokens
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), self.cfg.grad_clip)
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        # Sums over ranks: loss and terms, tokens; diagnostics are averaged.
        names, diags = sorted(term_sums), sorted(diag_sums)
        red = torch.tensor([loss_sum, *[term_sums[k] for k in names], float(real_tokens), float(padded_tokens),
                            *[diag_sums[k] / world for k in diags]], device=self.device)
        dist.all_reduce(red)
        vals = red.tolist()
        nt = len(names)
        if not all(math.isfinite(v) for v in vals):
            raise FloatingPointError(f"non-finite loss or term {dict(zip(['loss', *names], vals, strict=False))}")
        return StepResult(loss=vals[0], terms=dict(zip(names, vals[1 : 1 + nt], strict=True)),
                          diag=dict(zip(diags, vals[3 + nt :], strict=True)), real_tokens=int(vals[1 + nt]),
                          padded_tokens=int(vals[2 + nt]),
                          grad_norm=float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm))

    def _totals(self, micro: list[MicroBatch]) -> StepTotals:
        """The step's sample and token counts over every rank (losses normalised per token)."""
        counts = [sample_counts(batch) for batch, _ in micro]
        local = torch.tensor([sum(c[0] for c in counts), sum(c[1] for c in counts)], device=self.device)
        dist.all_reduce(local)
        return StepTotals(groups=self.step_size, samples=int(local[0]), sample_tokens=int(local[1]))

    def log(self, step: int, r: StepResult, seconds: float, data_wait_s: float) -> None:
        if self.loggers is None:
            return
        n = self.step_size
        rec = StepMetrics(
            step=step, epoch=step // self.steps_per_epoch, loss=r.loss / n, grad_norm=r.grad_norm,
            lr=self.sched.get_last_lr()[0], groups=n, real_tokens=r.real_tokens,
            padding_fraction=1 - r.real_tokens / max(r.padded_tokens, 1), tokens_per_s=r.real_tokens / seconds,
            data_wait_fraction=data_wait_s / seconds,
            # 6·N·tokens training FLOPs (attention excluded) over the peak of all devices.
            mfu=6 * self.n_params * r.real_tokens / seconds / (self.peak_flops * self.world) if self.peak_flops else None,
            **{f"loss_{k}": v / n for k, v in r.terms.items()}, **r.diag)
        self.loggers.log(step, rec.flat())
        progress.learner_step(step + 1, self.total_steps, r.real_tokens)  # a line in train.log, flushed

    def checkpoint(self, done: int) -> None:
        """Every ``checkpoint_every`` steps, and after the last one (what a resumed run exports)."""
        cfg = self.cfg
        due = done == self.total_steps or (cfg.checkpoint_every and done % cfg.checkpoint_every == 0)
        if not due:
            return
        checkpoint.save(self.ckpt_root, done, self.model, self.opt, {"step": done, "spec_digest": self.spec.spec_digest},
                        keep_last=cfg.checkpoint_keep_last)
        kill_point(f"train.checkpoint:{done}")

    # ---- export ----

    def export(self) -> None:
        """Rank 0 writes ``load_stats.json`` and the Hugging Face export ``model/``, the latter
        through a temporary directory renamed when complete: ``model/`` exists only whole."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        if self.start == self.total_steps == 0:
            raise ValueError("no training step: the score output has no usable group")
        # Each rank counted truncations/skips of the groups it materialised.
        counts = torch.tensor([self.groups.stats.truncated, self.groups.stats.skipped], device=self.device)
        dist.all_reduce(counts)
        # LoRA: only the trainable state is gathered; the frozen base is re-read from disk.
        full = get_model_state_dict(self.model, options=StateDictOptions(
            full_state_dict=True, cpu_offload=True, ignore_frozen_params=self.cfg.lora is not None))
        if self.rank == 0:
            stats = {"rows": self.groups.stats.rows, "truncated": int(counts[0]), "skipped": int(counts[1])}
            (self.out / "load_stats.json").write_text(json.dumps(stats))
            auto = "bfloat16" if self.use_cuda else "float32"
            dtype = EXPORT_DTYPES[auto if self.cfg.export_dtype == "auto" else self.cfg.export_dtype]
            if self.cfg.lora is not None:
                lora.export(full, self.spec.model_dir, self.cfg, dtype, self.out, self.tokenizer)
            else:
                self._export_full(full, dtype)
        dist.barrier()

    def _export_full(self, full: dict[str, Any], dtype: torch.dtype) -> None:
        from transformers import AutoModelForCausalLM

        # Eager attention: the export only holds weights (config.json does not record the kernel).
        export = AutoModelForCausalLM.from_config(self.model.config, dtype=torch.float32,
                                                  attn_implementation="eager")
        export.load_state_dict(policy_state_dict(full))  # learner-only heads (PPO's critic) stay out
        export.to(dtype)
        tmp = self.out / ".tmp-model"
        shutil.rmtree(tmp, ignore_errors=True)
        # Files under 5 GB: object stores copy an upload to its final key in one request, and
        # S3 caps single copies at 5 GiB (grao_pipe.storage.remote).
        export.save_pretrained(tmp, max_shard_size="4GB")
        kill_point("train.export")
        self.tokenizer.save_pretrained(tmp)
        tmp.rename(self.out / "model")

    def cleanup(self) -> None:
        if self.loggers is not None:
            self.loggers.close()
        self.loader.close()
        dist.destroy_process_group()
