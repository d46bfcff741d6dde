"""What sealing the learner's Arrow cache costs when a train stage reuses it: the preflight
(``prepare_cache``) now hashes each cache file against its seal before memory-mapping it.
Measured on a synthetic cache file of the learner's columns (default ~1 GB), the page cache
warm (as on a resume, right after the conversion), against the unsealed reuse path in the same
run: open the mapped file, count its groups.

    python benchmarks/bench_cache_seal.py [--rows 400000] [--tokens 256]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from grao_pipe.learner.data import _seal_matches, seal_file
from grao_pipe.storage.shards import file_sha256


def _table(rows: int, tokens: int, rng: np.random.Generator) -> pa.Table:
    def lists(n: int, dtype: str) -> pa.Array:
        values = rng.integers(0, 50_000, rows * n).astype(dtype) if dtype == "int32" else rng.random(rows * n, dtype="float32")
        return pa.ListArray.from_arrays(pa.array(np.arange(0, rows * n + 1, n, dtype="int32")), pa.array(values))

    gid = pa.array([f"{i // 8:016x}" for i in range(rows)])
    return pa.table({"group_id": gid, "prompt_token_ids": lists(tokens // 4, "int32"),
                     "response_token_ids": lists(tokens, "int32"), "behaviour_logprobs": lists(tokens, "float32"),
                     "advantage": pa.array(rng.random(rows))})


def _unsealed_reuse(path: Path) -> int:
    table = pa.ipc.open_file(pa.memory_map(str(path))).read_all()
    ids = table["group_id"]
    return 1 + (pc.sum(pc.not_equal(ids.slice(1), ids.slice(0, table.num_rows - 1))).as_py() or 0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=400_000)
    ap.add_argument("--tokens", type=int, default=256)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "00000-0123456789abcdef.arrow"
        table = _table(args.rows, args.tokens, np.random.default_rng(0))
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as w:
            w.write_table(table)
        del table
        seal_file(path).write_text(json.dumps({"size": path.stat().st_size, "sha256": file_sha256(path)}))
        size_gb = path.stat().st_size / 1e9
        _unsealed_reuse(path)  # warm the page cache
        t0 = time.perf_counter()
        _unsealed_reuse(path)
        base = time.perf_counter() - t0
        t0 = time.perf_counter()
        assert _seal_matches(path)
        _unsealed_reuse(path)
        sealed = time.perf_counter() - t0
    print(f"cache file {size_gb:.2f} GB: unsealed reuse {base:.3f}s, sealed reuse {sealed:.3f}s "
          f"(hash {size_gb / max(sealed - base, 1e-9):.2f} GB/s)")
    print(f"cache_seal_reuse_vs_unsealed: {sealed / base:.1f}")


if __name__ == "__main__":
    main()
