"""Crash consistency of the train stage with real processes: SIGKILL of the whole process group
(what a scheduler or the OOM killer does) at every phase boundary, then a plain re-run that must
finish with the losses and weights of an uninterrupted run; and no learner outliving its group."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from cli_runner import BIN, cli
from safetensors.torch import load_file
from tiny import TINY, merge

# 12 groups, 4 a step: 6 steps. One rank: these tests are about the stage, not the collectives
# (the orphan test runs two).
SECTIONS = {"train": {"epochs": 2, "checkpoint_every": 2, "nproc": 1}}


def _start(args: list[str], **env: str) -> subprocess.Popen:
    """``grao-pipe ARGS`` leading a process group of its own, as a scheduler starts a task."""
    return subprocess.Popen([*BIN, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", **env}, start_new_session=True)


def _losses(train_dir: Path) -> list[float]:
    return [json.loads(x)["loss"] for x in (train_dir / "metrics.jsonl").read_text().splitlines()]


def _weights(train_dir: Path) -> dict:
    return load_file(str(train_dir / "model" / "model.safetensors"))


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """generate + score done once; each case copies the workdir and trains in it."""
    root = tmp_path_factory.mktemp("scored")
    cfg = root / "c.yaml"
    import yaml

    cfg.write_text(yaml.safe_dump(merge({**TINY, "workdir": str(root / "work")}, SECTIONS)))
    for verb in ("generate", "score"):
        assert cli(verb, "-c", str(cfg)).returncode == 0
    straight = root / "straight"
    shutil.copytree(root / "work", straight)
    assert cli("train", "-c", str(cfg), f"workdir={straight}").returncode == 0
    (train_dir,) = (straight / "train").glob("*/")
    return cfg, root / "work", _losses(train_dir), _weights(train_dir)


PHASES = [
    "train.step:1",  # before the first checkpoint
    "train.checkpoint:2",  # right after a checkpoint
    "train.checkpoint:6",  # after the final checkpoint, before the export (this wedged the stage:
    # the next run, killed at the export, shows that it now resumes past it)
    "train.export",  # half-way through writing the export
    "train.exported",  # export done, manifest not written
]


def test_a_kill_at_every_phase_then_a_plain_rerun_finishes_the_same(scored, tmp_path):
    """One train stage killed at each phase boundary in turn (each run resumes what the last
    one left), then a plain run: it exits 0 with the uninterrupted run's losses and weights."""
    cfg, work, losses, weights = scored
    shutil.copytree(work, tmp_path / "work")
    workdir = f"workdir={tmp_path / 'work'}"
    for phase in PHASES:
        proc = _start(["train", "-c", str(cfg), workdir], GRAO_PIPE_KILL_AT=phase)
        assert proc.wait(timeout=300) == -signal.SIGKILL, f"{phase}: {proc.stderr.read() if proc.stderr else ''}"
        (train_dir,) = (tmp_path / "work" / "train").glob("*/")
        assert not (train_dir / "_manifest.json").exists(), phase

    again = cli("train", "-c", str(cfg), workdir)
    assert again.returncode == 0, again.stderr
    assert _losses(train_dir) == pytest.approx(losses, abs=1e-6)
    got = _weights(train_dir)
    assert got.keys() == weights.keys() and all((got[k] == weights[k]).all() for k in got)
    assert not (train_dir / "checkpoints").exists()  # resume state is dropped once the stage is done


def _learners(marker: str) -> list[int]:
    """pids of live processes whose command line mentions ``marker``."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                state = next(x for x in (d / "status").read_text().splitlines() if x.startswith("State:"))
            except (OSError, StopIteration):
                continue
            if marker in cmd and "grao_pipe.learner.worker" in cmd and " Z " not in f" {state.split()[1]} ":
                out.append(int(d.name))
    return out


def test_no_learner_outlives_its_process_group(scored, tmp_path):
    cfg, work, _, _ = scored
    shutil.copytree(work, tmp_path / "work")
    run = ["train", "-c", str(cfg), f"workdir={tmp_path / 'work'}", "train.epochs=4", "train.nproc=2"]
    proc = _start(run)
    deadline = time.time() + 180
    while time.time() < deadline and not list((tmp_path / "work").glob("train/*/metrics.jsonl")):
        time.sleep(0.1)
    assert _learners(str(tmp_path)), "the learners should be running"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(2)
    assert _learners(str(tmp_path)) == []
    again = cli(*run)
    assert again.returncode == 0, again.stderr


def test_a_planted_checkpoint_is_never_loaded(scored, tmp_path):
    """DCP's .metadata is a pickle: one the stage's own runs did not seal is deleted, unread."""
    import pickle

    cfg, work, losses, _ = scored
    shutil.copytree(work, tmp_path / "work")
    marker = tmp_path / "executed"

    class Payload:
        def __reduce__(self):
            return (exec, (f"open({str(marker)!r}, 'w').write('pwned')",))

    from stage_runner import stage_dir

    from grao_pipe.config import load_config

    train_dir = stage_dir("train", load_config(cfg, [f"workdir={tmp_path / 'work'}"]))
    planted = train_dir / "checkpoints" / "step-5"
    planted.mkdir(parents=True)
    (planted / ".metadata").write_bytes(pickle.dumps(Payload()))
    out = cli("train", "-c", str(cfg), f"workdir={tmp_path / 'work'}")
    assert out.returncode == 0, out.stderr
    assert not marker.exists()
    assert "ignoring checkpoint" in (train_dir / "train.log").read_text()
    assert _losses(train_dir) == pytest.approx(losses, abs=1e-6)  # trained from scratch, as if absent


def test_a_kill_after_a_splice_leaves_nothing_half_written_and_the_rerun_writes_the_same_shards(scored, tmp_path):
    """score killed when a spliced shard's temporary is written but not renamed (issue #20's
    kills during the splice): no shard or manifest appears, and a plain re-run writes shards
    byte-identical to an uninterrupted run's."""
    cfg, work, _, _ = scored
    shutil.copytree(work, tmp_path / "work")
    (score_dir,) = (tmp_path / "work" / "score").glob("*/")
    straight = {p.name: p.read_bytes() for p in score_dir.glob("shard-*.parquet")}
    shutil.rmtree(score_dir)
    workdir = f"workdir={tmp_path / 'work'}"
    proc = _start(["score", "-c", str(cfg), workdir], GRAO_PIPE_KILL_AT="shard.spliced")
    assert proc.wait(timeout=300) == -signal.SIGKILL, proc.stderr.read() if proc.stderr else ""
    assert not list(score_dir.glob("shard-*.parquet")) and not (score_dir / "_manifest.json").exists()
    again = cli("score", "-c", str(cfg), workdir)
    assert again.returncode == 0, again.stderr
    assert {p.name: p.read_bytes() for p in score_dir.glob("shard-*.parquet")} == straight
    assert not [p for p in score_dir.iterdir() if p.name.startswith(".tmp")]
