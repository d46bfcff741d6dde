"""The score stage as a user runs it (`grao-pipe score` through the CLI) against a plain Polars
script doing the same work on the same files: read the generate shards, compute R(o, y) with the
arith rule, the reference-in-group advantages, write Parquet. Whole processes, alternated A/B,
in one run; wall seconds and peak memory (max RSS) of each; outputs checked equal.

The input is made with the project's writers (a finished generate output of --rows samples, G per
prompt, sharded as generate shards them). `--scorer python` makes both sides call the same
row-wise Python function instead (the stage's row-by-row path vs Polars map_elements).

    python benchmarks/bench_score_stage.py [--rows 1000000] [--group 8] [--repeats 3] [--scorer builtin|python]

Last line: ``score_stage_vs_polars: <x>`` (median Polars seconds / median stage seconds; > 1: the
stage is faster).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

POLARS_SCRIPT = r'''
import sys
import polars as pl

src, dst, scorer = sys.argv[1], sys.argv[2], sys.argv[3]
PROMPT, ANSWER, EPS = r"^\s*([0-9]+)\s*\+\s*([0-9]+)\s*=\s*$", r"^\s*([0-9]+)", 1e-6
df = pl.scan_parquet(f"{src}/*.parquet")
if scorer == "builtin":
    ops = pl.col("prompt").str.extract_groups(PROMPT)
    df = df.with_columns(_sum=ops.struct.field("1").cast(pl.Int64, strict=False)
                         + ops.struct.field("2").cast(pl.Int64, strict=False))
    def correct(c):
        return (pl.col(c).str.extract(ANSWER, 1).cast(pl.Int64, strict=False) == pl.col("_sum")).fill_null(False).cast(pl.Float64)
    reward = pl.when(pl.col("_sum").is_not_null()).then(correct("response") - correct("reference"))
else:
    from grao_pipe.tasks.arith import score_one
    reward = pl.struct("prompt", "response", "reference").map_elements(
        lambda r: score_one(r["prompt"], r["response"], r["reference"]), return_dtype=pl.Float64)
# GRAO advantages, reference in the group: mean and population std over the G rewards and 0.
r = pl.col("reward")
df = df.with_columns(reward=reward).with_columns(
    _n=r.count().over("group_id").cast(pl.Float64), _s=r.sum().over("group_id"))
df = df.with_columns(_mu=pl.col("_s") / (pl.col("_n") + 1))
df = df.with_columns(_sq=((r - pl.col("_mu")) ** 2).sum().over("group_id"))
df = df.with_columns(_sigma=((pl.col("_sq") + pl.col("_mu") ** 2) / (pl.col("_n") + 1)).sqrt())
deg = (pl.col("_n") < 2) | (pl.col("_sigma") < EPS)
df = df.with_columns(
    advantage=pl.when(deg | r.is_null()).then(0.0).otherwise((r - pl.col("_mu")) / (pl.col("_sigma") + EPS)),
    reference_advantage=pl.when(deg).then(0.0).otherwise(-pl.col("_mu") / (pl.col("_sigma") + EPS)),
    degenerate=deg,
).drop("_n", "_s", "_mu", "_sq", "_sigma", "_sum", strict=False)
df.sink_parquet(dst, compression="zstd")
'''


def make_input(root: Path, rows: int, g: int, scorer: str) -> Path:
    """A prompt file, a stand-in model directory, a config, and the finished generate output
    written where the pipeline looks for it (StageDir.write_shard, GenerateManifest)."""
    from grao_pipe.config import load_config
    from grao_pipe.manifests import GenerateManifest, GenerateStats
    from grao_pipe.pipeline import Pipeline
    from grao_pipe.prompts import group_id
    from grao_pipe.schemas import GENERATE_SCHEMA, shard_name

    rng = np.random.default_rng(0)
    n_prompts = rows // g
    pairs = rng.choice(10**8, n_prompts, replace=False)  # distinct prompts: one group each
    a, b = pairs // 10**4, pairs % 10**4
    prompts = [f"{x}+{y}=" for x, y in zip(a, b, strict=True)]
    refs = [str(x + y) if rng.random() > 0.2 else str(x + y + 1) for x, y in zip(a, b, strict=True)]
    (root / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p, "reference": y}) + "\n"
                                                for p, y in zip(prompts, refs, strict=True)))
    model = root / "model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "stand-in"}')  # keys hash it; nothing loads it
    function = "grao_pipe.tasks.arith:score" if scorer == "builtin" else "grao_pipe.tasks.arith:score_one"
    cfg_path = root / "bench.yaml"
    cfg_path.write_text(yaml.safe_dump({
        "workdir": str(root / "work"), "model": {"path": str(model)},
        "data": {"prompts": str(root / "prompts.jsonl")}, "generate": {"num_samples": g},
        "score": {"scorers": [{"kind": "function", "name": "arith", "function": function}]}}))
    cfg = load_config(cfg_path)
    target = Pipeline(cfg).target("generate", 1)
    per = cfg.generate.shard_prompts
    n_shards = -(-n_prompts // per)
    entries = []
    for s in range(n_shards):
        lo, hi = s * per, min((s + 1) * per, n_prompts)
        n = (hi - lo) * g
        pidx = np.repeat(np.arange(lo, hi), g)
        sums = a[pidx] + b[pidx]
        answers = np.where(rng.random(n) < 0.5, sums, sums + rng.integers(1, 5, n))

        def lists(lengths: np.ndarray, dtype: type = np.int32) -> pa.Array:
            offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
            values = rng.integers(1, 50000, int(offsets[-1])).astype(dtype) if dtype is np.int32 \
                else -rng.random(int(offsets[-1])).astype(np.float32)
            return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))

        resp_len = rng.integers(4, 48, n)
        table = pa.table({
            "group_id": pa.array([group_id(prompts[i], refs[i]) for i in pidx]),
            "sample_idx": pa.array(np.tile(np.arange(g), hi - lo), pa.int32()),
            "prompt_idx": pa.array(pidx, pa.int64()),
            "prompt": pa.array([prompts[i] for i in pidx]),
            "prompt_messages": pa.nulls(n, GENERATE_SCHEMA.field("prompt_messages").type),
            "reference": pa.array([refs[i] for i in pidx]),
            "reference_rejected": pa.nulls(n, pa.string()),
            "reference_rejected_token_ids": pa.nulls(n, pa.list_(pa.int32())),
            "response": pa.array([f"{v} is the sum" for v in answers]),
            "prompt_token_ids": lists(np.full(n, 24)), "response_token_ids": lists(resp_len),
            "reference_token_ids": lists(np.full(n, 4)), "behaviour_logprobs": lists(resp_len, np.float32),
            "finish_reason": pa.array(["stop"] * n), "temperature": pa.array(np.full(n, 0.7, np.float32)),
            "top_p": pa.array(np.ones(n, np.float32)), "max_new_tokens": pa.array(np.full(n, 64, np.int32)),
            "seed": pa.array(np.zeros(n, np.int64)), "backend": pa.array(["hf"] * n),
            "policy_digest": pa.array(["bench"] * n),
        }, schema=GENERATE_SCHEMA)
        entries.append(target.dir.write_shard(shard_name(s, n_shards), table, "generate"))
    target.dir.commit(GenerateManifest(key=target.key, config=target.config, inputs={**target.inputs, "round": 1},
                                       shards=entries, stats=GenerateStats(samples=rows, prompts=n_prompts)))
    return cfg_path


def timed(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS in MiB) of a whole process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "POLARS_MAX_THREADS": os.environ.get("POLARS_MAX_THREADS", "")}
                            if os.environ.get("POLARS_MAX_THREADS") else {**os.environ, "HF_HUB_OFFLINE": "1"})
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {proc.stderr.read().decode() if proc.stderr else ''}")
    return wall, usage.ru_maxrss / 1024


def check_equal(stage_dir: Path, polars_file: Path) -> None:
    cols = ["group_id", "sample_idx", "reward", "advantage", "reference_advantage", "degenerate"]
    a = pa.concat_tables([pq.read_table(p, columns=cols) for p in sorted(stage_dir.glob("shard-*.parquet"))])
    b = pq.read_table(polars_file, columns=cols)
    key = [("group_id", "ascending"), ("sample_idx", "ascending")]
    a, b = a.sort_by(key), b.sort_by(key)
    assert a["reward"].to_pylist() == b["reward"].to_pylist(), "rewards differ"
    for c in ("advantage", "reference_advantage"):
        x, y = a[c].to_numpy(), b[c].to_numpy()
        assert np.allclose(x, y, rtol=1e-9, atol=1e-9), f"{c} differs (max {np.abs(x - y).max()})"
    assert a["degenerate"].equals(b["degenerate"]), "degenerate flags differ"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--scorer", choices=["builtin", "python"], default="builtin")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        cfg = make_input(root, a.rows, a.group, a.scorer)
        (gen_dir,) = (root / "work" / "generate").glob("*/")
        n_files = len(list(gen_dir.glob("shard-*.parquet")))
        print(f"input: {a.rows} rows in {n_files} generate shards ({sum(p.stat().st_size for p in gen_dir.glob('*.parquet')) / 2**20:.0f} MiB), "
              f"made in {time.perf_counter() - t0:.1f} s; scorer {a.scorer}; load average {os.getloadavg()[0]:.2f}")
        stage_cmd = [sys.executable, "-m", "grao_pipe.cli", "score", "-c", str(cfg)]
        polars_cmd = [sys.executable, "-c", POLARS_SCRIPT, str(gen_dir), str(root / "polars.parquet"), a.scorer]
        stage, polars = [], []
        for _ in range(a.repeats):
            # A run from scratch each time: no score output, no cached raw rewards.
            shutil.rmtree(root / "work" / "score", ignore_errors=True)
            shutil.rmtree(root / "work" / "rewards", ignore_errors=True)
            stage.append(timed(stage_cmd))
            polars.append(timed(polars_cmd))
        (score_dir,) = (root / "work" / "score").glob("*/")
        check_equal(score_dir, root / "polars.parquet")
    med = lambda xs, i: statistics.median(x[i] for x in xs)  # noqa: E731
    print(f"{'':>22} {'wall s (median)':>16} {'min':>7} {'max':>7} {'peak RSS MiB':>13}")
    for name, runs in (("grao-pipe score", stage), ("polars script", polars)):
        print(f"{name:>22} {med(runs, 0):>16.2f} {min(r[0] for r in runs):>7.2f} {max(r[0] for r in runs):>7.2f} "
              f"{med(runs, 1):>13.0f}")
    print(f"outputs equal (rewards, advantages, degenerate flags); load average {os.getloadavg()[0]:.2f}")
    print(f"score_stage_vs_polars: {med(polars, 0) / med(stage, 0):.2f}")


if __name__ == "__main__":
    main()
