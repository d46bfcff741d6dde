"""Learner loader memory against dataset size: anonymous RSS (file-backed, memory-mapped pages
excluded) after opening the group store and materialising the same number of groups, for
datasets 1x and 10x as large, in one run.

    python benchmarks/bench_loader.py [--groups 20000] [--scale 10] [--g 8] [--tokens 32]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa

from grao_pipe.schemas import SCORE_SCHEMA, shard_name
from grao_pipe.storage.shards import write_shard


def make_shards(root: Path, groups: int, g: int, tokens: int, per_shard: int = 5000) -> list[tuple[str, str]]:
    rng = np.random.default_rng(0)
    out = []
    n_shards = -(-groups // per_shard)
    for s in range(n_shards):
        n = min(per_shard, groups - s * per_shard) * g
        gid = np.repeat(np.arange(s * per_shard, s * per_shard + n // g), g)

        def lists(width: int, n: int = n) -> pa.Array:
            flat = pa.array(rng.integers(1, 1000, n * width, dtype=np.int32))
            return pa.ListArray.from_arrays(pa.array(np.arange(0, n * width + 1, width, dtype=np.int32)), flat)

        cols = {f.name: pa.nulls(n, f.type) for f in SCORE_SCHEMA}
        cols |= {"group_id": pa.array([f"{x:016x}" for x in gid]), "sample_idx": pa.array(np.tile(np.arange(g), n // g), pa.int32()),
                 "prompt_idx": pa.array(gid), "prompt": pa.array(["p"] * n), "reference": pa.array(["y"] * n),
                 "response": pa.array(["o"] * n), "prompt_token_ids": lists(tokens), "response_token_ids": lists(tokens),
                 "reference_token_ids": lists(tokens), "finish_reason": pa.array(["stop"] * n),
                 "temperature": pa.array(np.full(n, 0.7, np.float32)), "top_p": pa.array(np.ones(n, np.float32)),
                 "max_new_tokens": pa.array(np.full(n, tokens, np.int32)), "seed": pa.array(np.zeros(n, np.int64)),
                 "backend": pa.array(["hf"] * n), "policy_digest": pa.array(["d"] * n),
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


def child(spec: str) -> None:
    from grao_pipe.learner.data import GroupStore

    a = json.loads(spec)
    before = rss_anon_kib()
    store = GroupStore([(Path(p), s) for p, s in a["shards"]], Path(a["cache"]))
    for k in np.random.default_rng(1).choice(len(store), a["touch"], replace=False):
        store.group(int(k))
    print(json.dumps({"groups": len(store), "rss_anon_mib": (rss_anon_kib() - before) / 1024}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--groups", type=int, default=20000)
    ap.add_argument("--scale", type=int, default=10)
    ap.add_argument("--g", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--touch", type=int, default=2000, help="groups materialised (as steps would)")
    ap.add_argument("--child", default=None)
    a = ap.parse_args()
    if a.child:
        child(a.child)
        return
    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for n in (a.groups, a.groups * a.scale):
            root = Path(tmp) / str(n)
            (root / "cache").mkdir(parents=True)
            shards = make_shards(root, n, a.g, a.tokens)
            # Convert once (as rank 0 does), then measure a fresh process opening the store.
            subprocess.run([sys.executable, __file__, "--child", json.dumps({"shards": shards, "cache": str(root / "cache"), "touch": 1})],
                           check=True, capture_output=True)
            spec = json.dumps({"shards": shards, "cache": str(root / "cache"), "touch": a.touch})
            out = subprocess.run([sys.executable, __file__, "--child", spec], check=True, capture_output=True, text=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]) | {"rows": n * a.g})
    for r in rows:
        print(f"{r['groups']:>9} groups ({r['rows']:>9} rows): anonymous memory +{r['rss_anon_mib']:.1f} MiB")
    print(f"dataset x{a.scale} -> loader memory x{rows[1]['rss_anon_mib'] / max(rows[0]['rss_anon_mib'], 1e-9):.2f}")


if __name__ == "__main__":
    main()
