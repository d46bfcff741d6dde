"""Peak memory of one hf-backend ``sample()`` call, above what the loaded model already holds.

Every sample is forced to ``--max-new`` tokens (``min_new_tokens``), so two runs at the same
settings generate the same number of steps and compare like with like. CPU: resident set size
polled every millisecond; CUDA: ``torch.cuda.max_memory_allocated``.

    python benchmarks/bench_sampler_memory.py --model DIR [--g 32] [--max-new 8 160] [--prompts 1]
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from pathlib import Path

from grao_pipe.config import GenerateConfig
from grao_pipe.generation import Request
from grao_pipe.generation.hf import HFSampler
from grao_pipe.generation.tokenizer import PolicyTokenizer
from grao_pipe.prompts import Prompt

_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


class PeakRSS:
    """Highest resident set size seen while the block runs (a polling thread)."""

    def __enter__(self) -> PeakRSS:
        self.start = self.peak = rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(0.001)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


def measure(sampler: HFSampler, requests: list[Request], max_new: int) -> dict[str, float]:
    import torch

    sampler.cfg = sampler.cfg.model_copy(update={"max_new_tokens": max_new})
    sampler.model.generation_config.min_new_tokens = max_new  # every sample runs the full length
    cuda = sampler.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    t0 = time.perf_counter()
    with PeakRSS() as rss:
        groups = sampler.sample(requests, seed=0)
    seconds = time.perf_counter() - t0
    steps = max(len(s.token_ids) for g in groups for s in g)
    extra = (torch.cuda.max_memory_allocated() - base) if cuda else (rss.peak - rss.start)
    return {"max_new_tokens": max_new, "steps": steps, "seconds": round(seconds, 2),
            "peak_extra_mib": round(extra / 2**20, 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="a local Hugging Face model directory")
    ap.add_argument("--g", type=int, default=32)
    ap.add_argument("--max-new", type=int, nargs="+", default=[8, 160])
    ap.add_argument("--prompts", type=int, default=1)
    a = ap.parse_args()
    tok = PolicyTokenizer(Path(a.model))
    sampler = HFSampler(Path(a.model), GenerateConfig(num_samples=a.g, temperature=0.7), tok)
    prompts = [Prompt(i, None, (("user", f"Tell me a long story about dragon number {i}."),), "x")
               for i in range(a.prompts)]
    requests = [Request(p, tok.render(p), tok.encode(tok.render(p))) for p in prompts]
    measure(sampler, requests, 2)  # warm-up: first-call allocations are not the sampler's
    for n in a.max_new:
        print(json.dumps({"g": a.g, "prompts": a.prompts, "vocab": sampler.model.config.vocab_size,
                          **measure(sampler, requests, n)}), flush=True)


if __name__ == "__main__":
    main()
