"""Learner throughput on the same variable-length groups, in one run, through the learner's own
step (``grao_pipe.learner.worker.step_loss``): right-padded vs packed rows, the full-logits LM
head vs the chunked one, and the attention kernels for packed rows (sdpa with a dense
block-diagonal mask, flex_attention with a block-sparse document mask, flash_attention_2).

Lengths are lognormal (median ~260 tokens, capped), like chat rollouts. Each step is split into
micro-batches of whole groups by token budget, as the learner does. Prints real (non-padding)
tokens/s, the padding fraction, peak memory on a GPU and, with a known peak, MFU.

    python benchmarks/bench_learner.py                       # CPU, small model (no flex: no CPU backward)
    python benchmarks/bench_learner.py --device cuda --shape qwen2.5-0.5b --groups 16 --pack 8192
    python benchmarks/bench_learner.py --model runs/smollm2/models/gguf-fp32-...   # a real model

The last line is ``packed_vs_padded: <x>``: packed sdpa over padded sdpa, both with the chunked
head, at equal real tokens (>1: packing is faster).

``--lora R``: full fine-tuning vs rank-R LoRA adapters (all linear layers) on the same batches,
each as the learner runs it: ``--ranks`` processes (gloo on CPU, NCCL on GPUs), FSDP2, AdamW
over the trainable parameters, chunked head. Per case: step time, real tokens/s, peak memory
per rank (CUDA: peak allocated; CPU: peak RSS of the process, which loading the whole model
dominates, and how much the resident memory grew from the sharded model to the end of an
optimizer step) and the trainable parameters and optimizer state per rank. Last line ``lora_vs_full_step_time: <x>``, LoRA's step time over full
fine-tuning's (<1: LoRA is faster).

    python benchmarks/bench_learner.py --lora 16 --model <SmolLM2-135M-Instruct dir> --groups 2 --g 4 \
        --median 64 --cap 128 --steps 3
"""

from __future__ import annotations

import argparse
import os
import resource
import socket
import time
from dataclasses import dataclass

import numpy as np
import torch

from grao_pipe.config import TrainConfig
from grao_pipe.learner.data import Group, collate, micro_batches, pack
from grao_pipe.learner.recipe import PEAK_FLOPS
from grao_pipe.learner.step import step_loss

SHAPES = {
    "tiny": dict(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2),
    "qwen2.5-0.5b": dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=True),
}


@dataclass(frozen=True)
class Case:
    label: str
    attn: str
    packed: bool
    chunk: int  # train.logprob_chunk_tokens (0: full-logits head)


def make_groups(n: int, g: int, vocab: int, median: int, cap: int, seed: int = 0) -> list[Group]:
    rng = np.random.default_rng(seed)

    def length() -> int:
        return int(np.clip(rng.lognormal(np.log(median), 0.8), 8, cap))

    def toks(k: int) -> list[int]:
        return rng.integers(1, vocab, k).tolist()

    out = []
    for i in range(n):
        p = toks(length() // 4 + 4)
        out.append(Group(f"g{i}", p, toks(length()), 0.5, None, responses=[toks(length()) for _ in range(g)],
                         advantages=rng.standard_normal(g).tolist(), rewards=[0.0] * g,
                         behaviour=[None] * g, ref=[None] * g))
    return out


def cases(attns: list[str], chunk: int) -> list[Case]:
    out = [Case("padded sdpa full-head", "sdpa", False, 0)]
    if chunk:
        out.append(Case(f"padded sdpa chunk{chunk}", "sdpa", False, chunk))
    for attn in attns:
        out.append(Case(f"packed {attn} chunk{chunk}", attn, True, chunk))
    return out


def row_width(batch, cap: int) -> int:
    """The learner's packed-row width for this micro-batch (the Rust kernel's ``fit_rows``)."""
    import pyarrow as pa

    from grao_pipe import _native

    lengths = batch.attention_mask_NT.sum(-1).numpy().astype("int64")
    return _native.fit_rows(pa.array(lengths), cap)[2]


def run(model, groups, case: Case, device, budget, micro_tokens, steps, warmup, per_step, pad_id=0):
    """Real tokens/s and padding fraction over ``steps`` timed steps after ``warmup`` ones."""
    model.set_attn_implementation(case.attn)
    cfg = TrainConfig(logprob_chunk_tokens=case.chunk, attn_implementation=case.attn)  # type: ignore[arg-type]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    real = padded = 0
    t_total = 0.0
    for s in range(warmup + steps):
        step_groups = groups[(s * per_step) % len(groups):][:per_step]
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        n_real = n_padded = 0
        for mb in micro_batches(step_groups, micro_tokens):
            batch = collate(mb, pad_id)
            packed = pack(batch, row_width(batch, budget), pad_id) if case.packed else None
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                loss_B, _, _ = step_loss(model, batch, cfg, device, packed)
            (loss_B.sum() / per_step).backward()
            n_real += packed.real_tokens if packed else batch.real_tokens
            n_padded += packed.padded_tokens if packed else batch.padded_tokens
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if s >= warmup:  # the first steps compile kernels (flex) and warm allocators up
            t_total += time.perf_counter() - t0
            real, padded = real + n_real, padded + n_padded
    return real / t_total, 1 - real / padded


def _rss() -> int:
    """This process's resident memory now, in bytes (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _lora_rank(rank: int, world: int, port: int, a: argparse.Namespace, r: int, groups: list[Group],
               out: object) -> None:
    """One learner rank of one case (r = 0: full fine-tuning): its step times and peak memory."""
    import torch.distributed as dist
    from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM

    from grao_pipe.config import LoraConfig
    from grao_pipe.learner import lora
    from grao_pipe.learner.fsdp import shard_model
    from grao_pipe.learner.logprobs import CausalLMLogps
    from grao_pipe.learner.train_mode import prepare_for_training

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    cuda = a.device == "cuda"
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world)
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    torch.manual_seed(0)
    if a.model:
        lm = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32, attn_implementation="sdpa")
    else:
        lm = Qwen2ForCausalLM(Qwen2Config(**SHAPES[a.shape], max_position_embeddings=max(a.cap * 2, a.pack)))
    lm.to(device)  # type: ignore[arg-type]
    lm = prepare_for_training(lm, a.activation_checkpointing)
    if r:
        lm = lora.apply(lm, LoraConfig(r=r, alpha=2 * r))
    model = CausalLMLogps(lm)
    shard_model(model, device)
    params = lora.trainable(model)
    opt = torch.optim.AdamW(params, lr=1e-5)
    cfg = TrainConfig(logprob_chunk_tokens=a.chunk)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times, real = [], 0
    per_step = a.groups
    rss0 = _rss()
    grown = 0
    for s in range(a.warmup + a.steps):
        mine = groups[s * per_step:(s + 1) * per_step][rank::world]  # this rank's share of the step
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        n_real = 0
        mbs = list(micro_batches(mine, a.micro_tokens or 0))
        for i, mb in enumerate(mbs):
            batch = collate(mb, 0)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                loss_B, _, _ = step_loss(model, batch, cfg, device)
            model.set_requires_gradient_sync(i == len(mbs) - 1)  # type: ignore[operator]
            (loss_B.sum() * world / per_step).backward()
            n_real += batch.real_tokens
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        grown = max(grown, _rss() - rss0)  # gradients and optimizer state both alive here
        opt.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        if s >= a.warmup:
            times.append(time.perf_counter() - t0)
            real += n_real
    local_params = sum(p.to_local().numel() if hasattr(p, "to_local") else p.numel() for p in params)
    state = sum(v.to_local().nbytes if hasattr(v, "to_local") else v.nbytes
                for st in opt.state.values() for v in st.values() if isinstance(v, torch.Tensor))
    peak = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    red = torch.tensor([float(real), max(times), float(peak), float(grown)], dtype=torch.float64, device=device)
    tot = red.clone()
    dist.all_reduce(tot)  # real tokens summed over ranks
    mx = red.clone()
    dist.all_reduce(mx, op=dist.ReduceOp.MAX)  # the slowest rank's step, the largest peak
    if rank == 0:
        out.put({"real": tot[0].item(), "step_s": sum(times) / len(times), "peak": mx[2].item(),  # type: ignore[attr-defined]
                 "grown": mx[3].item(),
                 "trainable": local_params, "optim_bytes": state})
    dist.destroy_process_group()


def lora_vs_full(a: argparse.Namespace) -> None:
    import torch.multiprocessing as mp

    if a.warmup is None:
        a.warmup = 1
    vocab = SHAPES[a.shape]["vocab_size"]
    if a.model:
        from transformers import AutoConfig

        vocab = AutoConfig.from_pretrained(a.model).vocab_size
    groups = make_groups(a.groups * (a.warmup + a.steps), a.g, vocab, a.median, a.cap)
    print(f"{a.ranks} ranks on {a.device}, model {a.model or a.shape}, {a.groups} groups x {a.g + 1} seqs/step, "
          f"median {a.median} tokens (cap {a.cap}), {a.warmup} warm-up + {a.steps} timed steps, "
          f"load average {os.getloadavg()[0]:.2f}")
    res = {}
    ctx = mp.get_context("spawn")
    for label, r in (("full", 0), (f"lora r={a.lora}", a.lora)):
        q = ctx.Queue()
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        mp.start_processes(_lora_rank, args=(a.ranks, port, a, r, groups, q), nprocs=a.ranks, join=True,
                           start_method="spawn")
        m = q.get()
        res[label] = m
        print(f"{label:<12} step {m['step_s']:7.2f} s   real tokens/s {m['real'] / (m['step_s'] * a.steps):8.1f}   "
              f"peak/rank {m['peak'] / 2**20:6.0f} MiB (training adds {m['grown'] / 2**20:5.0f} MiB)   trainable/rank {m['trainable'] / 1e6:7.2f}M   "
              f"optimizer state/rank {m['optim_bytes'] / 2**20:7.1f} MiB")
    full, lo = res["full"], res[f"lora r={a.lora}"]
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    print(f"lora_vs_full_peak_memory: {lo['peak'] / full['peak']:.2f}")
    print(f"lora_vs_full_step_time: {lo['step_s'] / full['step_s']:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--shape", default="tiny", choices=sorted(SHAPES))
    ap.add_argument("--model", default=None, help="a Hugging Face model directory (overrides --shape)")
    ap.add_argument("--groups", type=int, default=4, help="groups per step")
    ap.add_argument("--g", type=int, default=8, help="samples per group")
    ap.add_argument("--median", type=int, default=260)
    ap.add_argument("--cap", type=int, default=2048)
    ap.add_argument("--pack", type=int, default=4096, help="tokens per packed row")
    ap.add_argument("--micro-tokens", type=int, default=None,
                    help="micro-batch budget in real tokens (default: 16384 on cuda, one micro-batch on cpu)")
    ap.add_argument("--chunk", type=int, default=TrainConfig().logprob_chunk_tokens,
                    help="LM-head chunk in tokens (0: full-logits head only)")
    ap.add_argument("--attn", default=None,
                    help="comma-separated kernels for packed rows (default: sdpa,flex_attention on cuda, sdpa on cpu)")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps (default: 2 on cuda, 1 on cpu)")
    ap.add_argument("--activation-checkpointing", action="store_true")
    ap.add_argument("--lora", type=int, default=0, help="rank R: full fine-tuning vs LoRA on the same batches")
    ap.add_argument("--ranks", type=int, default=2, help="--lora: learner processes (FSDP2)")
    a = ap.parse_args()
    if a.lora:
        lora_vs_full(a)
        return
    from transformers import Qwen2Config, Qwen2ForCausalLM

    device = torch.device(a.device)
    cuda = device.type == "cuda"
    attns = (a.attn or ("sdpa,flex_attention" if cuda else "sdpa")).split(",")
    if "flex_attention" in attns and not cuda:
        raise SystemExit("flex_attention has no backward on CPU; run it with --device cuda")
    micro_tokens = a.micro_tokens if a.micro_tokens is not None else (16384 if cuda else 0)
    warmup = a.warmup if a.warmup is not None else (2 if cuda else 1)
    torch.manual_seed(0)
    if a.model:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32).to(device)
        model.config.use_cache = False
        cfg, a.shape = model.config, a.model.rstrip("/").rsplit("/", 1)[-1]
    else:
        cfg = Qwen2Config(**SHAPES[a.shape], max_position_embeddings=max(a.cap * 2, a.pack))
        model = Qwen2ForCausalLM(cfg).to(device)
    if a.activation_checkpointing:
        model.gradient_checkpointing_enable()
    n_params = sum(p.numel() for p in model.parameters())
    groups = make_groups(a.groups * (warmup + a.steps), a.g, cfg.vocab_size, a.median, a.cap)
    peak = next((v for k, v in PEAK_FLOPS.items() if cuda and k in torch.cuda.get_device_name()), None)
    name = torch.cuda.get_device_name() if cuda else f"cpu ({torch.get_num_threads()} threads)"
    print(f"device {name}, shape {a.shape} ({n_params / 1e6:.1f}M params), {a.groups} groups x {a.g + 1} seqs/step, "
          f"micro-batches of {micro_tokens or 'all'} tokens, pack {a.pack}, {a.steps} timed steps")
    results: dict[str, float] = {}
    for case in cases(attns, a.chunk):
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        try:
            tps, pad_frac = run(model, groups, case, device, a.pack, micro_tokens, a.steps, warmup, a.groups)
        except torch.OutOfMemoryError:
            model.zero_grad(set_to_none=True)
            print(f"{case.label:<32} out of memory")
            continue
        results[case.label] = tps
        mfu = f"{6 * n_params * tps / peak:.1%}" if peak else "n/a"
        mem = f"   peak {torch.cuda.max_memory_allocated() / 2**30:5.1f} GiB" if cuda else ""
        print(f"{case.label:<32} real tokens/s {tps:>10.0f}   padding {pad_frac:>6.1%}   MFU {mfu}{mem}")
    base = results.get("padded sdpa full-head")
    for label, tps in results.items():
        if base and label != "padded sdpa full-head":
            print(f"{label} / padded sdpa full-head = {tps / base:.2f}x")
    packed, padded = results.get(f"packed sdpa chunk{a.chunk}"), results.get(f"padded sdpa chunk{a.chunk}")
    if packed and padded:
        print(f"packed_vs_padded: {packed / padded:.2f}")


if __name__ == "__main__":
    main()
