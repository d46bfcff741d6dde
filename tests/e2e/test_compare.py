"""``grao-pipe compare`` through the real CLI: 2 variants × 2 seeds on the tiny model, a SIGKILL
mid-run and a resume that gives the same per-prompt results as an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from cli_runner import BIN, cli
from tiny import TINY, merge

pytestmark = pytest.mark.slow

HELD_OUT = [{"prompt": f"{a}+{b}=", "reference": str(a + b)} for a, b in ((2, 3), (4, 1), (3, 3), (1, 4), (2, 2), (4, 4))]
COMPARE = {"variants": [{"name": "grao"}, {"name": "sft", "overrides": ["train.objective=sft"]}], "baseline": "sft",
           "seeds": [0, 1], "metrics": ["mean_reward", "nag_net"],
           "families": [{"name": "main", "claims": [{"variant": "grao"}, {"variant": "grao", "metric": "nag_net"}]}]}


def write_config(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    held = root / "held_out.jsonl"
    held.write_text("".join(json.dumps(r) + "\n" for r in HELD_OUT))
    tree = merge(TINY, {"workdir": str(root / "work"), "data": {"limit": 8}, "train": {"nproc": 1},
                        "eval": {"max_new_tokens": 3}, "compare": {**COMPARE, "test_prompts": str(held)}})
    path = root / "compare.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def results(root: Path) -> list[dict]:
    return sorted(pq.read_table(root / "work" / "compare" / "results.parquet").to_pylist(),
                  key=lambda r: (r["variant"], r["seed"], r["prompt_id"]))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    root = tmp_path_factory.mktemp("compare")
    out = cli("compare", "-c", str(write_config(root)))
    assert out.returncode == 0, out.stderr
    return root, out


def test_compare_report_and_per_prompt_results(uninterrupted):
    root, out = uninterrupted
    rows = results(root)
    # 2 variants × 2 seeds × 6 held-out prompts, every (variant, seed) on the same prompt ids
    assert len(rows) == 24
    ids = {(r["variant"], r["seed"]): set() for r in rows}
    for r in rows:
        ids[(r["variant"], r["seed"])].add(r["prompt_id"])
    assert len({frozenset(v) for v in ids.values()}) == 1 and len(next(iter(ids.values()))) == 6
    # The base model's answers are the same for both variants of a seed (same eval samples).
    base = {(r["seed"], r["prompt_id"]): (r["base_answer"], r["base_reward"]) for r in rows if r["variant"] == "sft"}
    assert all(base[(r["seed"], r["prompt_id"])] == (r["base_answer"], r["base_reward"]) for r in rows)
    # Provenance on every row; variants that change only train.* share generate + score.
    assert all(r["commit"] and json.loads(r["versions"])["torch"] and len(r["config_digest"]) == 64 for r in rows)
    gen_dirs = [d for d in (root / "work" / "generate").iterdir() if (d / "_SUCCESS").exists()]
    assert len(gen_dirs) == 2  # one per seed, not per variant × seed
    report = (root / "work" / "compare" / "report.md").read_text()
    assert "mean R per seed" in report and "p Holm" in report
    assert report.count("not shown (no difference can be shown: 2 seeds cannot reach α/2 = 0.025)") == 2
    assert "p Holm" in out.stdout
    for name in ("mean_reward.png", "nag_net.png", "report.html", "summary.json"):
        assert (root / "work" / "compare" / name).stat().st_size > 500
    # cached: a second compare trains nothing and writes the same results
    again = cli("compare", "-c", str(root / "compare.yaml"))
    assert again.returncode == 0 and again.stderr.count("(cached)") == 4, again.stderr
    assert results(root) == rows


def test_compare_resumes_after_sigkill(uninterrupted, tmp_path):
    cfg = write_config(tmp_path)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([*BIN, "compare", "-c", str(cfg)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    # Kill once the first run's eval has committed: the SIGKILL lands in the second run.
    while not list((tmp_path / "work").glob("eval/*/_SUCCESS")):
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        assert time.monotonic() < deadline
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "work" / "compare" / "results.parquet").exists()
    resumed = cli("compare", "-c", str(cfg))
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stderr.count("(cached)") >= 1  # the run finished before the kill is not redone
    assert results(tmp_path) == results(uninterrupted[0])
