"""The hf generation backend batched against one prompt at a time, in one run, on the same
prompts and model (responses/s and tokens/s, and the ratio).

    python benchmarks/bench_generate.py [--prompts 64] [--batch 32] [--g 8] [--max-new 32]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from grao_pipe.config import DataConfig, GenerateConfig, TinyModelConfig
from grao_pipe.generation import Request
from grao_pipe.generation.hf import HFSampler
from grao_pipe.generation.tokenizer import PolicyTokenizer
from grao_pipe.models.tiny import build_tiny_model
from grao_pipe.prompts import load_prompts


def timed(sampler: HFSampler, requests: list[Request], batch: int) -> tuple[float, int]:
    t0 = time.perf_counter()
    tokens = 0
    for b in range(0, len(requests), batch):
        for group in sampler.sample(requests[b : b + batch], seed=b):
            tokens += sum(len(s.token_ids) for s in group)
    return time.perf_counter() - t0, tokens


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--g", type=int, default=8)
    ap.add_argument("--max-new", type=int, default=32)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--model", default=None, help="a local HF model directory (default: a tiny Qwen2)")
    a = ap.parse_args()
    prompts = load_prompts(DataConfig(limit=a.prompts))
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(a.model) if a.model else build_tiny_model(
            TinyModelConfig(hidden_size=a.hidden, intermediate_size=4 * a.hidden, num_hidden_layers=4),
            [t for p in prompts for t in (p.text or "", p.reference)], Path(tmp))
        tok = PolicyTokenizer(model)
        cfg = GenerateConfig(num_samples=a.g, max_new_tokens=a.max_new, temperature=0.7)
        sampler = HFSampler(model, cfg, tok)
        requests = [Request(p, tok.render(p), tok.encode(tok.render(p))) for p in prompts]
        timed(sampler, requests[:2], 2)  # warm-up
        t_one, n_one = timed(sampler, requests, 1)
        t_batch, n_batch = timed(sampler, requests, a.batch)
    print(f"device {sampler.device}, {len(requests)} prompts x G={a.g}, max_new_tokens {a.max_new}")
    print(f"one prompt per call : {t_one:7.2f}s  {len(requests) * a.g / t_one:8.1f} responses/s  {n_one / t_one:9.0f} tokens/s")
    print(f"batch of {a.batch:<3}        : {t_batch:7.2f}s  {len(requests) * a.g / t_batch:8.1f} responses/s  {n_batch / t_batch:9.0f} tokens/s")
    print(f"batched / one-at-a-time = {t_one / t_batch:.2f}x (responses/s)")


if __name__ == "__main__":
    main()
