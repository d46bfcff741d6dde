"""Learner throughput: packed against right-padded batches on the same variable-length groups,
in one run, through the learner's own step (``grao_pipe.learner.worker.step_loss``).

Lengths are lognormal (median ~260 tokens, capped), like chat rollouts. Prints real
(non-padding) tokens/s, the padding fraction and, on a GPU with a known peak, MFU.

    python benchmarks/bench_learner.py                       # CPU, small model
    python benchmarks/bench_learner.py --device cuda --shape qwen2.5-0.5b --groups 16 --pack 8192
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from grao_pipe.config import TrainConfig
from grao_pipe.learner.data import Group, collate, pack
from grao_pipe.learner.worker import PEAK_FLOPS, step_loss

SHAPES = {
    "tiny": dict(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2),
    "qwen2.5-0.5b": dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=True),
}


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


def run(model, groups, cfg, device, budget, steps, per_step, pad_id=0):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    real = padded = 0
    t_total = 0.0
    for s in range(steps + 1):  # step 0 warms up
        batch = collate(groups[(s * per_step) % len(groups):][:per_step], pad_id)
        packed = pack(batch, max(budget, batch.input_ids_NT.shape[1]), pad_id) if budget else None
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss_B, _, _ = step_loss(model, batch, cfg, device, packed)
        loss_B.mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if s:
            t_total += time.perf_counter() - t0
            real += packed.real_tokens if packed else batch.real_tokens
            padded += packed.padded_tokens if packed else batch.padded_tokens
    return real / t_total, 1 - real / padded


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--shape", default="tiny", choices=sorted(SHAPES))
    ap.add_argument("--groups", type=int, default=4, help="groups per step")
    ap.add_argument("--g", type=int, default=8, help="samples per group")
    ap.add_argument("--median", type=int, default=260)
    ap.add_argument("--cap", type=int, default=2048)
    ap.add_argument("--pack", type=int, default=4096, help="tokens per packed row")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--attn", default="sdpa")
    a = ap.parse_args()
    from transformers import Qwen2Config, Qwen2ForCausalLM

    device = torch.device(a.device)
    torch.manual_seed(0)
    cfg = Qwen2Config(**SHAPES[a.shape], max_position_embeddings=max(a.cap * 2, a.pack))
    model = Qwen2ForCausalLM(cfg).to(device)
    model.config._attn_implementation = a.attn
    n_params = sum(p.numel() for p in model.parameters())
    groups = make_groups(a.groups * (a.steps + 1), a.g, cfg.vocab_size, a.median, a.cap)
    tcfg = TrainConfig()
    peak = next((v for k, v in PEAK_FLOPS.items() if device.type == "cuda" and k in torch.cuda.get_device_name()), None)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"device {name}, shape {a.shape} ({n_params / 1e6:.1f}M params), {a.groups} groups x {a.g + 1} seqs/step")
    results = {}
    for label, budget in (("padded", 0), (f"packed {a.pack}", a.pack)):
        tps, pad_frac = run(model, groups, tcfg, device, budget, a.steps, a.groups)
        results[label] = tps
        mfu = f"{6 * n_params * tps / peak:.1%}" if peak else "n/a"
        print(f"{label:<14} real tokens/s {tps:>10.0f}   padding {pad_frac:>6.1%}   MFU {mfu}")
    print(f"packed / padded = {results[f'packed {a.pack}'] / results['padded']:.2f}x")


if __name__ == "__main__":
    main()
