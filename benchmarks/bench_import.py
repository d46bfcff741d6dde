"""The import as a user runs it (`grao-pipe generate` with `generate.backend=import`, the whole CLI
stage) against a plain Polars script reading the same OpenAI Batch / vLLM `run_batch` files and
writing Parquet with the columns it can produce: the join of requests and results, one row per
choice, prompt and response token ids from the same fast tokenizer (batch encode), the log-probs
as the file has them (unchecked), finish_reason. Whole processes, alternated, in one run; wall
seconds and peak memory (max RSS) of each; row counts and token ids checked equal.

The input is made here: --rows completions, --group choices per request (n), one request per
prompt (a distinct "a+b=" prompt with an `id`, matched by `custom_id`), responses of about a
dozen tokens with vLLM's /v1/completions log-probs as `token_id:N` (return_tokens_as_token_ids), 10% cut at
the length limit; the tokenizer is a byte-level BPE trained here (4096 tokens, a stand-in model
directory: the import reads only the tokenizer and config.json).

    python benchmarks/bench_import.py [--rows 1000000] [--group 8] [--repeats 3]

Last line: ``import_vs_polars: <x>`` (median Polars seconds / median stage seconds; > 1: the
stage is faster).
"""

from __future__ import annotations

import argparse
import json
import os
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
import pyarrow as pa
from transformers import AutoTokenizer

req_path, res_path, model, dst = sys.argv[1:5]
tok = AutoTokenizer.from_pretrained(model)
eos = tok.eos_token_id
req = pl.read_ndjson(req_path, schema={"custom_id": pl.String, "body": pl.Struct({"prompt": pl.String})})
res = pl.read_ndjson(res_path, schema={"custom_id": pl.String, "response": pl.Struct({"body": pl.Struct({
    "model": pl.String, "choices": pl.List(pl.Struct({"index": pl.Int64, "text": pl.String, "finish_reason": pl.String,
    "logprobs": pl.Struct({"token_logprobs": pl.List(pl.Float64)})}))})})})
c = pl.col("c")
rows = (res.select("custom_id", c=pl.col("response").struct.field("body").struct.field("choices")).explode("c")
        .select("custom_id", index=c.struct.field("index"), response=c.struct.field("text"),
                finish_reason=c.struct.field("finish_reason"),
                behaviour_logprobs=c.struct.field("logprobs").struct.field("token_logprobs").cast(pl.List(pl.Float32)))
        .join(req.select("custom_id", prompt=pl.col("body").struct.field("prompt")), on="custom_id"))
backend = tok.backend_tokenizer
def ids(texts, stops=None):
    enc = [e.ids for e in backend.encode_batch_fast(texts, add_special_tokens=False)]
    if stops is not None:
        enc = [[*e, eos] if s else e for e, s in zip(enc, stops)]
    return pa.array(enc, pa.list_(pa.int32()))
rows = rows.with_columns(
    prompt_token_ids=pl.from_arrow(ids(rows["prompt"].to_list())),
    response_token_ids=pl.from_arrow(ids(rows["response"].to_list(), (rows["finish_reason"] == "stop").to_list())))
rows.write_parquet(dst, compression="zstd")
'''

WORDS = ["the", "sum", "is", "answer", "so", "we", "get", "adding", "gives", "result", "of", "and", "then", "total"]


def make_input(root: Path, rows: int, g: int) -> Path:
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    rng = np.random.default_rng(0)
    n_prompts = rows // g
    pairs = rng.choice(10**8, n_prompts, replace=False)
    a, b = pairs // 10**4, pairs % 10**4
    # A stand-in policy: a byte-level BPE (GPT-2 style) trained on text like the responses.
    sample = [" ".join(rng.choice(WORDS, 6)) + f" {x}+{y}={x + y}." for x, y in zip(a[:5000], b[:5000], strict=True)]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(sample, vocab_size=4096, special_tokens=["<|endoftext|>"], show_progress=False)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    model = root / "model"
    tok.save_pretrained(model)
    (model / "config.json").write_text(json.dumps({"model_type": "stand-in", "max_position_embeddings": 4096}))
    eos = tok.eos_token_id
    (root / "prompts.jsonl").write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"{x}+{y}=", "reference": str(x + y)})
                                                + "\n" for i, (x, y) in enumerate(zip(a, b, strict=True))))
    backend = tok.backend_tokenizer
    with open(root / "requests.jsonl", "w") as rq, open(root / "results.jsonl", "w") as rs:
        for lo in range(0, n_prompts, 4096):
            hi = min(lo + 4096, n_prompts)
            texts = [" ".join(rng.choice(WORDS, int(rng.integers(3, 8)))) + f" {a[i] + b[i] + int(rng.integers(0, 3))}."
                     for i in range(lo, hi) for _ in range(g)]
            encs = [e.ids for e in backend.encode_batch_fast(texts, add_special_tokens=False)]
            stops = rng.random(len(texts)) > 0.1
            lps = -rng.random(sum(len(e) for e in encs) + len(texts))
            k = 0
            for p in range(lo, hi):
                cid = f"p{p}"
                rq.write(json.dumps({"custom_id": cid, "method": "POST", "url": "/v1/completions", "body": {
                    "model": "policy", "prompt": f"{a[p]}+{b[p]}=", "n": g, "max_tokens": 32, "temperature": 1.0,
                    "logprobs": 1, "seed": p}}) + "\n")
                choices = []
                for j in range(g):
                    t = (p - lo) * g + j
                    ids = [*encs[t], eos] if stops[t] else encs[t]
                    # /v1/completions' log-probs (vLLM's legacy form, token ids as ``token_id:N``).
                    logprobs = {"text_offset": list(range(len(ids))), "token_logprobs": lps[k : k + len(ids)].tolist(),
                                "tokens": [f"token_id:{i}" for i in ids], "top_logprobs": None}
                    k += len(ids)
                    choices.append({"index": j, "text": texts[t], "finish_reason": "stop" if stops[t] else "length",
                                    "logprobs": logprobs})
                rs.write(json.dumps({"id": f"vllm-{p}", "custom_id": cid, "response": {"status_code": 200, "request_id": cid,
                         "body": {"id": f"cmpl-{p}", "object": "text_completion", "created": 0, "model": "policy",
                                  "choices": choices}}, "error": None}) + "\n")
    cfg = root / "bench.yaml"
    cfg.write_text(yaml.safe_dump({
        "workdir": str(root / "work"), "model": {"path": str(model)},
        "data": {"prompts": str(root / "prompts.jsonl")},
        "generate": {"backend": "import", "num_samples": g, "import": {
            "format": "openai-batch", "requests": str(root / "requests.jsonl"), "results": str(root / "results.jsonl")}}}))
    return cfg


def timed(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS in MiB) of a whole process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {proc.stderr.read().decode() if proc.stderr else ''}")
    return wall, usage.ru_maxrss / 1024


def check_equal(stage_dir: Path, polars_file: Path, rows: int) -> None:
    cols = ["response", "response_token_ids", "prompt_token_ids"]
    a = pa.concat_tables([pq.read_table(p, columns=[*cols, "behaviour_logprobs"])
                          for p in sorted(stage_dir.glob("shard-*.parquet"))])
    b = pq.read_table(polars_file, columns=cols)
    assert a.num_rows == b.num_rows == rows, (a.num_rows, b.num_rows, rows)
    assert a["behaviour_logprobs"].null_count == 0, "every log-prob list aligns with the policy's tokens"
    key = lambda t: sorted(zip(t["response"].to_pylist(), t["response_token_ids"].to_pylist(),  # noqa: E731
                               t["prompt_token_ids"].to_pylist(), strict=True))
    assert key(a) == key(b), "token ids differ"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        cfg = make_input(root, a.rows, a.group)
        size = sum((root / f).stat().st_size for f in ("requests.jsonl", "results.jsonl")) / 2**20
        print(f"input: {a.rows} completions, {a.rows // a.group} requests (n={a.group}), {size:.0f} MiB of JSONL, made in "
              f"{time.perf_counter() - t0:.1f} s; load average {os.getloadavg()[0]:.2f}")
        stage_cmd = [sys.executable, "-m", "grao_pipe.cli", "generate", "-c", str(cfg), "--force"]
        polars_cmd = [sys.executable, "-c", POLARS_SCRIPT, str(root / "requests.jsonl"), str(root / "results.jsonl"),
                      str(root / "model"), str(root / "polars.parquet")]
        stage, polars = [], []
        for _ in range(a.repeats):
            stage.append(timed(stage_cmd))
            polars.append(timed(polars_cmd))
        (gen_dir,) = (root / "work" / "generate").glob("*/")
        check_equal(gen_dir, root / "polars.parquet", a.rows // a.group * a.group)
    med = lambda xs, i: statistics.median(x[i] for x in xs)  # noqa: E731
    print(f"{'':>24} {'wall s (median)':>16} {'min':>7} {'max':>7} {'peak RSS MiB':>13}")
    for name, runs in (("grao-pipe generate", stage), ("polars script", polars)):
        print(f"{name:>24} {med(runs, 0):>16.2f} {min(r[0] for r in runs):>7.2f} {max(r[0] for r in runs):>7.2f} "
              f"{med(runs, 1):>13.0f}")
    print(f"rows and token ids equal; every log-prob list aligned; load average {os.getloadavg()[0]:.2f}")
    print(f"import_vs_polars: {med(polars, 0) / med(stage, 0):.2f}")


if __name__ == "__main__":
    main()
