"""Chaos: SIGKILL the process group of `grao-pipe run` at random instants of a 2-round tiny
pipeline, re-run after each kill, and require the end state of an uninterrupted run: exit 0, the
same rows in every stage, the same weights, a byte-identical report, `datasets verify` ok, and
no process left behind.

Seeded (GRAO_PIPE_CHAOS_SEED), so a failure reproduces its schedule; GRAO_PIPE_CHAOS_KILLS sets
how many kills (10 in `make test`, 50 in `make chaos`)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pyarrow.parquet as pq
import yaml
from cli_runner import BIN, cli

KILLS = int(os.environ.get("GRAO_PIPE_CHAOS_KILLS", "10"))
SEED = int(os.environ.get("GRAO_PIPE_CHAOS_SEED", "0"))
CONFIG = {
    "name": "chaos",
    "data": {"prompts": "builtin:arith", "limit": 8},
    "generate": {"num_samples": 2, "max_new_tokens": 3, "batch_size": 2, "prompts_per_shard": 2},
    "train": {"lr": 1e-3, "groups_per_step": 2, "epochs": 1, "nproc": 1, "checkpoint_every": 1},
    "run": {"rounds": 2},
}


# Named instants a random delay seldom hits: a score shard spliced but not renamed (the Rust
# splice writes the temporary; the kill lands before the rename).
KILL_POINTS = ("shard.spliced",)


def _run(cfg: Path, work: Path, report: Path, kill_at: str | None = None) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"} | ({"GRAO_PIPE_KILL_AT": kill_at} if kill_at else {})
    return subprocess.Popen([*BIN, "run", "-c", str(cfg), f"workdir={work}", "--report-json", str(report)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)


def _survivors(marker: str) -> list[str]:
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = next(x for x in (d / "status").read_text().splitlines() if x.startswith("State:")).split()[1]
        except (OSError, StopIteration):
            continue
        if marker in cmd and state != "Z":
            found.append(cmd)
    return found


def _rows(work: Path, stage: str) -> dict[str, list[tuple]]:
    out = {}
    for d in sorted((work / stage).glob("*/")):
        cols = ["group_id", "sample_idx", "response"] + (["reward", "advantage"] if stage == "score" else [])
        rows = [tuple(r.values()) for p in sorted(d.glob("shard-*.parquet"))
                for r in pq.read_table(p, columns=cols).to_pylist()]
        out[d.name] = sorted(rows)
    return out


def _models(work: Path) -> dict[str, str]:
    import hashlib

    return {d.name: hashlib.sha256((d / "model" / "model.safetensors").read_bytes()).hexdigest()
            for d in sorted((work / "train").glob("*/"))}


def test_random_sigkills_then_reruns_end_like_an_uninterrupted_run(tmp_path):
    cfg = tmp_path / "chaos.yaml"
    cfg.write_text(yaml.safe_dump(CONFIG))
    straight, chaotic = tmp_path / "straight", tmp_path / "chaotic"
    t0 = time.monotonic()
    ref = _run(cfg, straight, tmp_path / "straight.json")
    assert ref.wait(timeout=600) == 0, ref.stderr.read() if ref.stderr else ""
    duration = time.monotonic() - t0

    rng = random.Random(SEED)
    kills = runs = named = 0
    while kills < KILLS:
        runs += 1
        # Every fourth run dies at a named point instead (the next runs, without it, move on).
        kill_at = KILL_POINTS[runs // 4 % len(KILL_POINTS)] if runs % 4 == 2 else None
        proc = _run(cfg, chaotic, tmp_path / "chaotic.json", kill_at)
        # Short, random lives: every phase gets hit, and each re-run still makes progress. A
        # run with a named point lives until it reaches it (or finishes).
        delay = rng.uniform(0.5, max(1.0, duration / 4))
        if kill_at:
            delay = 600
        try:
            rc = proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            kills += 1
            continue
        if rc == -signal.SIGKILL and kill_at:  # died at its named point
            kills += 1
            named += 1
            continue
        assert rc == 0, f"run {runs} (after {kills} kills) failed: {proc.stderr.read() if proc.stderr else ''}"
        # It finished before its kill: start over in a fresh workdir so all kills land mid-work.
        os.rename(chaotic, tmp_path / f"finished-{runs}")
    time.sleep(0.5)
    assert _survivors(str(chaotic)) == [], "a process of a killed run is still alive"
    assert named > 0 or KILLS < 4, "no run died at a named point"

    final = _run(cfg, chaotic, tmp_path / "chaotic.json")
    assert final.wait(timeout=600) == 0, final.stderr.read() if final.stderr else ""
    for stage in ("generate", "score"):
        assert _rows(chaotic, stage) == _rows(straight, stage)  # same keys, same rows
    assert _models(chaotic) == _models(straight)
    assert (tmp_path / "chaotic.json").read_bytes() == (tmp_path / "straight.json").read_bytes()
    assert json.loads((tmp_path / "straight.json").read_text())[-1]["round"] == 2
    verify = cli("datasets", "verify", "-c", str(cfg), "-w", str(chaotic))
    assert verify.returncode == 0, verify.stderr
    assert _survivors(str(chaotic)) == []
