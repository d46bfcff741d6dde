"""generate.backend=import through the real CLI: a SIGKILL mid-import then a re-run, and a whole
`grao-pipe run` (import -> score -> train, round 2 sampled from the trained model, eval), with
`datasets show` and `export` of the imported dataset."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import yaml
from cli_runner import BIN, cli
from tiny import TINY, merge

from grao_pipe.config import DataConfig
from grao_pipe.prompts import load_prompt_set
from grao_pipe.storage import local_input


def _arith_batch(root: Path) -> dict:
    """An OpenAI Batch pair for the tiny config's 12 arith prompts: /v1/completions requests with
    n=4 (plain-text prompts, matched by their text), results in reverse order, one failed."""
    prompts = load_prompt_set(local_input("builtin:arith"), DataConfig(limit=12)).prompts
    reqs, results = [], []
    for p in prompts:
        cid = f"req-{p.index}"
        reqs.append({"custom_id": cid, "method": "POST", "url": "/v1/completions",
                     "body": {"model": "offline-sampler", "prompt": p.text, "n": 4, "max_tokens": 3, "temperature": 1.0}})
        a, b = (int(x) for x in (p.text or "").rstrip("=").split("+"))
        texts = [str(a + b), str(a + b + 1), str(a + b), str(a * b)]
        body = {"id": "cmpl", "object": "text_completion", "created": 1, "model": "offline-sampler",
                "choices": [{"index": k, "text": t, "finish_reason": "stop" if k % 2 == 0 else "length", "logprobs": None}
                            for k, t in enumerate(texts)]}
        results.append({"id": f"b-{cid}", "custom_id": cid, "response": {"status_code": 200, "body": body}, "error": None})
    results[3] = {"id": "b-x", "custom_id": "req-3", "response": {"status_code": 429, "body": {"error": {"message": "rate"}}},
                  "error": None}
    (root / "requests.jsonl").write_text("".join(json.dumps(r) + "\n" for r in reqs))
    (root / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in reversed(results)))
    return {"format": "openai-batch", "requests": str(root / "requests.jsonl"), "results": str(root / "results.jsonl")}


def _config(root: Path, workdir: str, **extra: dict) -> Path:
    gen = {"backend": "import", "import": _arith_batch(root), "prompts_per_shard": 3}
    tree = merge({**TINY, "workdir": str(root / workdir)}, {"generate": gen, "data": {"max_quarantine_share": 0.2}, **extra})
    path = root / f"{workdir}.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def _shards(workdir: Path) -> dict[str, str]:
    (gen,) = (workdir / "generate").glob("*/")
    return {s["name"]: s["sha256"] for s in json.loads((gen / "_manifest.json").read_text())["shards"]}


def test_sigkill_mid_import_then_a_rerun_finishes_the_same(tmp_path):
    cfg = _config(tmp_path, "work")
    proc = subprocess.Popen([*BIN, "generate", "-c", str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "HF_HUB_OFFLINE": "1", "GRAO_PIPE_KILL_AT": "generate.import:1"},
                            start_new_session=True)
    assert proc.wait(timeout=300) == -signal.SIGKILL, proc.stderr.read() if proc.stderr else ""
    (gen,) = (tmp_path / "work" / "generate").glob("*/")
    assert sorted(p.name for p in gen.glob("shard-*")) == ["shard-00000-of-00004.parquet", "shard-00001-of-00004.parquet"]
    assert not (gen / "_manifest.json").exists()
    assert list(gen.glob(".tmp-import-spill*"))  # the dead writer's spill, removed by the next run
    again = cli("generate", "-c", str(cfg))
    assert again.returncode == 0, again.stderr
    assert not list(gen.glob(".tmp-*"))
    straight = cli("generate", "-c", str(_config(tmp_path, "straight")))
    assert straight.returncode == 0, straight.stderr
    assert _shards(tmp_path / "work") == _shards(tmp_path / "straight")  # byte for byte


def test_run_import_score_train_then_round_two_samples_and_eval(tmp_path):
    cfg = _config(tmp_path, "work", run={"rounds": 2, "eval": True}, train={"nproc": 1}, eval={"limit": 6})
    out = cli("run", "-c", str(cfg))
    assert out.returncode == 0, out.stderr
    said = out.stdout + out.stderr
    assert "imported (openai-batch) from 12 records" in said and "quarantined: failed 1" in said
    gens = {}
    for d in (tmp_path / "work" / "generate").glob("*/"):
        m = json.loads((d / "_manifest.json").read_text())
        gens[m["inputs"]["round"]] = (d, m)
    assert gens[1][1]["config"]["generate"]["backend"] == "import"
    assert gens[2][1]["config"]["generate"]["backend"] == "hf"  # round 2: the trained model samples
    assert gens[1][1]["rows"] == 44 and gens[2][1]["rows"] == 48
    assert len(list((tmp_path / "work" / "train").glob("*/model/config.json"))) == 2
    assert list((tmp_path / "work" / "eval").glob("*/_manifest.json"))

    status = cli("status", "-c", str(cfg))  # keys of an import are computed without running anything
    assert status.returncode == 0 and status.stdout.count("done") >= 6, status.stdout + status.stderr
    shown = cli("datasets", "show", "-c", str(cfg), gens[1][0].name[:10])
    assert shown.returncode == 0, shown.stderr
    card = json.loads(shown.stdout)
    imported = card["import"]
    assert imported["format"] == "openai-batch" and imported["models_seen"] == ["offline-sampler"]
    assert imported["quarantined"] == {"failed": 1}
    assert set(imported["files"]) == {"requests", "results"} and len(imported["files"]["results"]["sha256"]) == 64
    assert card["lineage"]["policy_digest"][0].startswith("import:offline-sampler@")
    export = cli("datasets", "export", "-c", str(cfg), gens[1][0].name[:10], "--format", "prompt-completion",
                 "--out", str(tmp_path / "export"))
    assert export.returncode == 0, export.stderr
    assert "11 rows" in export.stderr  # one per imported group (one of 12 requests failed)
    import pyarrow.parquet as pq

    rows = pq.read_table(tmp_path / "export" / "train.parquet").to_pylist()
    assert len(rows) == 11 and all(r["prompt"].endswith("=") and r["completion"] for r in rows)
