"""Group advantages on N rows (default 10M, G=8, rewards in {-1, 0, 1}): the Rust kernel
against a Polars expression, pandas groupby-transform, a numpy reshape (fixed G only) and
plain Python, on the same data, in one run. Each implementation runs in its own subprocess so
its peak memory (max RSS above the loaded data) is its own.

    python benchmarks/bench_advantages.py [--rows 10000000] [--group 8] [--python-rows N]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

OUT = Path(__file__).parent / "out"
EPS = 1e-6


def group_sizes(rows: int, g: int, sizes: str, rng: np.random.Generator) -> np.ndarray:
    """Group sizes summing to ``rows``: all ``g`` (fixed), uniform in 1..16, or lognormal
    (median ``g``, long tail, capped at 256) as when generation drops or adds samples."""
    if sizes == "fixed":
        return np.full(rows // g, g)
    draw = (lambda n: rng.integers(1, 17, n)) if sizes == "uniform" else \
        (lambda n: np.clip(np.rint(rng.lognormal(np.log(g), 0.75, n)), 1, 256).astype(np.int64))
    out = draw(2 * rows // g + 16)
    while out.sum() < rows:
        out = np.concatenate([out, draw(rows // g + 16)])
    cut = int(np.searchsorted(np.cumsum(out), rows))
    out = out[: cut + 1]
    out[-1] -= out.sum() - rows
    return out[out > 0]


def make_data(rows: int, g: int, path: Path, sizes: str = "fixed") -> None:
    rng = np.random.default_rng(0)
    counts = group_sizes(rows, g, sizes, rng)
    groups = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
    rewards = rng.integers(-1, 2, size=groups.size).astype(np.float64)
    pq.write_table(pa.table({"group_id": groups, "reward": rewards}), path)


def impl_rust(t: pa.Table, g: int):
    from grao_pipe import _native

    ids, r = t["group_id"].combine_chunks(), t["reward"].combine_chunks()
    return lambda: _native.group_advantages(ids, r, mode="reference_in_group", eps=EPS, std_floor=EPS)


def impl_polars(t: pa.Table, g: int):
    import polars as pl

    from grao_pipe.advantages import polars_reference
    from grao_pipe.config import AdvantageConfig

    df = pl.from_arrow(t)
    cfg = AdvantageConfig(eps=EPS, std_floor=EPS)
    return lambda: polars_reference(df, cfg)


def impl_pandas(t: pa.Table, g: int):
    df = t.to_pandas()

    def run():
        grp = df.groupby("group_id", sort=False)["reward"]
        n = grp.transform("count") + 1
        mu = grp.transform("sum") / n
        sq = ((df["reward"] - mu) ** 2).groupby(df["group_id"], sort=False).transform("sum")
        sigma = np.sqrt((sq + mu**2) / n)
        return (df["reward"] - mu) / (sigma + EPS), -mu / (sigma + EPS)

    return run


def impl_numpy(t: pa.Table, g: int):
    r = t["reward"].to_numpy().reshape(-1, g)  # only valid when every group has exactly g rows

    def run():
        full = np.concatenate([r, np.zeros((r.shape[0], 1))], axis=1)
        mu = full.mean(1, keepdims=True)
        sigma = full.std(1, keepdims=True)
        return (r - mu) / (sigma + EPS), -mu / (sigma + EPS)

    return run


def impl_python(t: pa.Table, g: int):
    ids, rewards = t["group_id"].to_pylist(), t["reward"].to_pylist()

    def run():
        out, i, n = [0.0] * len(ids), 0, len(ids)
        while i < n:
            j = i
            while j < n and ids[j] == ids[i]:
                j += 1
            vals = [*rewards[i:j], 0.0]
            mu = sum(vals) / len(vals)
            sigma = (sum((v - mu) ** 2 for v in vals) / len(vals)) ** 0.5
            for k in range(i, j):
                out[k] = (rewards[k] - mu) / (sigma + EPS)
            i = j
        return out

    return run


IMPLS = {"rust": impl_rust, "polars": impl_polars, "pandas": impl_pandas, "numpy_reshape": impl_numpy,
         "python": impl_python}


def child(name: str, path: Path, g: int, repeats: int) -> None:
    t = pq.read_table(path)
    fn = IMPLS[name](t, g)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"impl": name, "rows": t.num_rows, "seconds": min(times), "peak_extra_mib": (peak - base) / 1024}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--sizes", choices=["fixed", "uniform", "lognormal", "all"], default="all",
                    help="group sizes: all G (fixed), uniform 1-16, lognormal around G; all: each in turn")
    ap.add_argument("--python-rows", type=int, default=None, help="rows for plain Python (default: all)")
    ap.add_argument("--repeats", type=int, default=10, help="best of N (the first call also faults in the output pages)")
    ap.add_argument("--child", default=None)
    ap.add_argument("--data", default=None)
    a = ap.parse_args()
    if a.child:
        child(a.child, Path(a.data), a.group, a.repeats)
        return
    OUT.mkdir(exist_ok=True)
    ratios = {}
    for sizes in (["fixed", "uniform", "lognormal"] if a.sizes == "all" else [a.sizes]):
        ratios[sizes] = run_case(a, sizes)
    print(f"load average {os.getloadavg()[0]:.2f}")
    print(f"advantages_rust_vs_polars: {min(ratios.values()):.1f}")


def run_case(a: argparse.Namespace, sizes: str) -> float:
    data = OUT / f"adv-{a.rows}-{a.group}-{sizes}.parquet"
    if not data.exists():
        make_data(a.rows, a.group, data, sizes)
    # numpy's reshape needs equal groups: only the fixed case has it.
    impls = [n for n in IMPLS if n != "numpy_reshape" or sizes == "fixed"]
    results = {}
    for name in impls:
        path, repeats = data, a.repeats
        if name == "python":
            repeats = 1
            if a.python_rows:
                path = OUT / f"adv-{a.python_rows}-{a.group}-{sizes}.parquet"
                if not path.exists():
                    make_data(a.python_rows, a.group, path, sizes)
        proc = subprocess.run([sys.executable, __file__, "--child", name, "--data", str(path),
                               "--group", str(a.group), "--repeats", str(repeats)],
                              capture_output=True, text=True, check=True)
        results[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    rust = results["rust"]["rows"] / results["rust"]["seconds"]
    print(f"group sizes: {sizes}")
    print(f"{'impl':<15}{'rows':>12}{'seconds':>10}{'Mrows/s':>10}{'rust is x faster':>18}{'peak MiB':>10}")
    for name, r in results.items():
        rate = r["rows"] / r["seconds"]
        print(f"{name:<15}{r['rows']:>12}{r['seconds']:>10.4f}{rate / 1e6:>10.1f}{rust / rate:>18.1f}{r['peak_extra_mib']:>10.0f}")
    bytes_touched = 16 * a.rows  # 8 B id + 8 B reward read per row (outputs excluded)
    print(f"rust reads {bytes_touched / results['rust']['seconds'] / 1e9:.1f} GB/s of input\n")
    polars = results["polars"]["rows"] / results["polars"]["seconds"]
    return rust / polars


if __name__ == "__main__":
    main()
