"""Learner loader: throughput on one core against the old Python path and against what one GPU
consumes, and memory against dataset size, in one run.

Throughput: the whole path a training step uses - open the group store (memory-mapped Arrow
copies of score shards), take a step's groups for one rank, build its micro-batches padded and
packed - in a child process pinned to one core with one torch thread. The Rust path
(``StepLoader``: the kernel in a background thread, one step ahead) against the Python path
the learner used before (``GroupStore.group`` + ``micro_batches`` + ``collate`` + ``pack``), on
the same steps, and against 82k tokens/s: a bare FSDP2 loop on a Qwen2.5-0.5B-shaped model on
one H200 (docs/design-decisions.md). Tokens are real (non-padding) tokens.

Memory: anonymous RSS (file-backed, memory-mapped pages excluded) of a fresh process that opens
the store and builds the same number of steps, for datasets 1x and 10x as large.

    python benchmarks/bench_loader.py [--groups 3000] [--steps 160] [--scale 10]

The last line is ``loader_tokens_per_s_vs_82k: <packed tokens/s / 82000>``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from grao_pipe.schemas import SCORE_SCHEMA, shard_name
from grao_pipe.storage.shards import write_shard

GPU_TOKENS_PER_S = 82_000  # one H200, Qwen2.5-0.5B shape, bf16, sdpa, 2048 x 8 (design reference)


def make_shards(root: Path, groups: int, g: int, prompt: tuple[int, int], response: tuple[int, int],
                reference: tuple[int, int], per_shard: int = 2000, seed: int = 0) -> list[tuple[str, str]]:
    """Score shards written by the project's writer: groups of g samples, token lengths uniform
    in the given [lo, hi] ranges, behaviour log-probs on every response."""
    rng = np.random.default_rng(seed)
    out = []
    n_shards = -(-groups // per_shard)
    for s in range(n_shards):
        n_groups = min(per_shard, groups - s * per_shard)
        n = n_groups * g
        gid = np.repeat(np.arange(s * per_shard, s * per_shard + n_groups), g)

        def lists(lengths: np.ndarray, floats: bool = False) -> pa.Array:
            offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
            total = int(offsets[-1])
            values = -rng.random(total, dtype=np.float32) if floats else rng.integers(1, 150_000, total, dtype=np.int32)
            return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))

        def per_group(lo_hi: tuple[int, int], n_groups: int = n_groups) -> np.ndarray:  # one per group, per row
            return np.repeat(rng.integers(lo_hi[0], lo_hi[1] + 1, n_groups), g)

        p_len, r_len = per_group(prompt), per_group(reference)
        o_len = rng.integers(response[0], response[1] + 1, n)
        cols = {f.name: pa.nulls(n, f.type) for f in SCORE_SCHEMA}
        cols |= {"group_id": pa.array([f"{x:016x}" for x in gid]), "sample_idx": pa.array(np.tile(np.arange(g), n_groups), pa.int32()),
                 "prompt_idx": pa.array(gid), "prompt": pa.array(["p"] * n), "reference": pa.array(["y"] * n),
                 "response": pa.array(["o"] * n), "prompt_token_ids": lists(p_len), "response_token_ids": lists(o_len),
                 "reference_token_ids": lists(r_len), "behaviour_logprobs": lists(o_len, floats=True),
                 "finish_reason": pa.array(["stop"] * n), "temperature": pa.array(np.full(n, 0.7, np.float32)),
                 "top_p": pa.array(np.ones(n, np.float32)), "max_new_tokens": pa.array(np.full(n, response[1], np.int32)),
                 "seed": pa.array(np.zeros(n, np.int64)), "backend": pa.array(["hf"] * n), "policy_digest": pa.array(["d"] * n),
                 "reward": pa.array(rng.integers(-1, 2, n).astype(float)), "reward_valid": pa.array(np.ones(n, bool)),
                 "advantage": pa.array(rng.standard_normal(n)), "reference_advantage": pa.array(np.zeros(n)),
                 "degenerate": pa.array(np.zeros(n, bool)), "keep": pa.array(np.ones(n, bool))}
        path = root / shard_name(s, n_shards)
        entry = write_shard(path, pa.table(cols), "score")
        out.append((str(path), entry["sha256"]))
    return out


def rss_anon_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
    return -1


def _one_core() -> int:
    """Pin this process (and the loader thread it starts) to one core, torch to one thread."""
    import torch

    core = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {core})
    torch.set_num_threads(1)
    return core


def _python_path(store, ks: np.ndarray, a: dict) -> tuple[int, int]:
    """The learner's loader before the Rust kernel: Python lists, torch.tensor per sequence."""
    from grao_pipe.learner.data import collate, micro_batches, pack

    real = padded = 0
    for mb in micro_batches([store.group(int(k)) for k in ks], a["micro_batch_tokens"]):
        batch = collate(mb, 0)
        if a["pack_tokens"]:
            p = pack(batch, max(a["pack_tokens"], batch.input_ids_NT.shape[1]), 0)
            real, padded = real + p.real_tokens, padded + p.padded_tokens
        else:
            real, padded = real + batch.real_tokens, padded + batch.padded_tokens
    return real, padded


def throughput_child(a: dict) -> dict:
    """Loader tokens/s of one path, one layout, on one core."""
    from grao_pipe.learner.data import GroupStore, StepLoader

    core = _one_core()
    pc.indices_nonzero(pa.array([True]))  # pyarrow.compute imports pandas on first use: start-up, not loader work
    t0, c0 = time.perf_counter(), time.process_time()
    store = GroupStore([(Path(p), s) for p, s in a["shards"]], Path(a["cache"]))
    options = {"seed": 0, "step_size": a["groups_per_step"], "rank": 0, "world": a["world"], "pad_id": 0,
               "micro_batch_tokens": a["micro_batch_tokens"], "pack_tokens": a["pack_tokens"]}
    loader = StepLoader(store, **options, stop=a["steps"] if a["path"] == "rust" else 0)
    real = padded = waited = 0
    if a["path"] == "rust":
        for step in loader:  # the training loop's side: take each step as it is ready
            for mb in step.micro:
                out = mb.packed if mb.packed is not None else mb.batch
                real, padded = real + out.real_tokens, padded + out.padded_tokens
            waited += step.wait_s
    else:
        for s in range(a["steps"]):
            r, p = _python_path(store, loader.groups_of(s), a)
            real, padded = real + r, padded + p
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"core": core, "seconds": dt, "cpu_seconds": cpu, "real": real, "padded": padded, "tokens_per_s": real / dt}


def memory_child(a: dict) -> dict:
    from grao_pipe.learner.data import GroupStore, StepLoader

    before = rss_anon_kib()
    store = GroupStore([(Path(p), s) for p, s in a["shards"]], Path(a["cache"]))
    peak = 0
    steps = StepLoader(store, seed=1, step_size=a["groups_per_step"], rank=0, world=1, pad_id=0,
                       micro_batch_tokens=a["micro_batch_tokens"], pack_tokens=a["pack_tokens"], stop=a["steps"])
    for _ in steps:
        peak = max(peak, rss_anon_kib() - before)
    return {"groups": len(store), "rss_anon_mib": (rss_anon_kib() - before) / 1024, "peak_mib": peak / 1024}


def run_child(kind: str, spec: dict) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", kind, json.dumps(spec)], check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def convert(shards: list[tuple[str, str]], cache: Path) -> float:
    """Rank 0's one-time conversion to memory-mapped Arrow files (not part of a step)."""
    from grao_pipe.learner.data import GroupStore

    cache.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    GroupStore([(Path(p), s) for p, s in shards], cache)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--groups", type=int, default=3000, help="groups of the throughput dataset")
    ap.add_argument("--g", type=int, default=8, help="samples per group")
    ap.add_argument("--prompt", type=int, nargs=2, default=(64, 512), help="prompt tokens, min max")
    ap.add_argument("--response", type=int, nargs=2, default=(32, 1024), help="response tokens, min max")
    ap.add_argument("--reference", type=int, nargs=2, default=(32, 512), help="reference tokens, min max")
    ap.add_argument("--groups-per-step", type=int, default=64)
    ap.add_argument("--world", type=int, default=8, help="ranks; the benchmark is rank 0")
    ap.add_argument("--micro-batch-tokens", type=int, default=16384)
    ap.add_argument("--pack-tokens", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=160, help="steps of the Rust path (epochs repeat)")
    ap.add_argument("--old-steps", type=int, default=12, help="steps of the (slow) Python path")
    ap.add_argument("--scale", type=int, default=10, help="memory: dataset x1 and x scale")
    ap.add_argument("--mem-groups", type=int, default=20000)
    ap.add_argument("--mem-tokens", type=int, default=32, help="memory: tokens per prompt/response/reference")
    ap.add_argument("--mem-steps", type=int, default=30)
    ap.add_argument("--child", nargs=2, default=None)
    a = ap.parse_args()
    if a.child:
        fn = {"throughput": throughput_child, "memory": memory_child}[a.child[0]]
        print(json.dumps(fn(json.loads(a.child[1]))))
        return
    step = {"groups_per_step": a.groups_per_step, "micro_batch_tokens": a.micro_batch_tokens}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "throughput"
        root.mkdir()
        shards = make_shards(root, a.groups, a.g, a.prompt, a.response, a.reference)
        conversion_s = convert(shards, root / "cache")
        rows = []
        for path, steps in (("python", a.old_steps), ("rust", a.steps)):
            for layout, pack_tokens in (("padded", 0), ("packed", a.pack_tokens)):
                spec = {**step, "shards": shards, "cache": str(root / "cache"), "world": a.world, "path": path,
                        "steps": steps, "pack_tokens": pack_tokens}
                rows.append({"path": path, "layout": layout, "steps": steps, **run_child("throughput", spec)})
        mem = []
        for n in (a.mem_groups, a.mem_groups * a.scale):
            root = Path(tmp) / f"mem{n}"
            root.mkdir()
            t = a.mem_tokens
            shards = make_shards(root, n, a.g, (t, t), (t, t), (t, t), per_shard=5000)
            convert(shards, root / "cache")
            spec = {**step, "shards": shards, "cache": str(root / "cache"), "steps": a.mem_steps,
                    "pack_tokens": a.pack_tokens}
            mem.append(run_child("memory", spec) | {"rows": n * a.g})

    old = {r["layout"]: r["tokens_per_s"] for r in rows if r["path"] == "python"}
    print(f"loader, one core (cpu {rows[0]['core']}), rank 0 of {a.world}, {a.groups_per_step} groups/step, "
          f"micro-batches <= {a.micro_batch_tokens} tokens, packed rows <= {a.pack_tokens}; "
          f"{a.groups} groups of {a.g}, prompt {a.prompt}, response {a.response}, reference {a.reference} tokens; "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"{'path':<24}{'layout':<8}{'steps':>6}{'real tokens':>13}{'seconds':>9}{'cpu s':>7}{'tokens/s':>13}"
          f"{'vs python':>11}{'vs 82k':>9}{'padding':>9}")
    for r in rows:
        name = "python (old)" if r["path"] == "python" else "rust kernel + prefetch"
        print(f"{name:<24}{r['layout']:<8}{r['steps']:>6}{r['real']:>13}{r['seconds']:>9.2f}{r['cpu_seconds']:>7.2f}"
              f"{r['tokens_per_s']:>13,.0f}{r['tokens_per_s'] / old[r['layout']]:>10.1f}x"
              f"{r['tokens_per_s'] / GPU_TOKENS_PER_S:>8.1f}x{1 - r['real'] / max(r['padded'], 1):>9.1%}")
    print("(tokens/s: real tokens over wall-clock seconds; cpu s: CPU time of both loader threads, on one core)")
    print(f"(one-time conversion of the score shards to memory-mapped Arrow files: {conversion_s:.1f} s)")
    for m in mem:
        print(f"memory: {m['groups']:>9} groups ({m['rows']:>9} rows): anonymous memory +{m['rss_anon_mib']:.1f} MiB "
              f"(peak while building {a.mem_steps} steps: +{m['peak_mib']:.1f} MiB)")
    print(f"memory: dataset x{a.scale} -> loader memory x{mem[1]['rss_anon_mib'] / max(mem[0]['rss_anon_mib'], 1e-9):.2f}, "
          f"peak x{mem[1]['peak_mib'] / max(mem[0]['peak_mib'], 1e-9):.2f}")
    packed = next(r["tokens_per_s"] for r in rows if r["path"] == "rust" and r["layout"] == "packed")
    print(f"loader_tokens_per_s_vs_82k: {packed / GPU_TOKENS_PER_S:.2f}")


if __name__ == "__main__":
    main()
