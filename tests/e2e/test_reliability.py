"""Crashes and a full disk, with real processes: nothing committed is lost, nothing partial is
visible, and the next run finishes the job without duplicating rows."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from cli_runner import BIN, cli

from grao_pipe.storage import shard_is_committed


def _row_keys(directory: Path) -> list[tuple[str, int]]:
    return [(r["group_id"], r["sample_idx"]) for p in sorted(directory.glob("shard-*.parquet"))
            for r in pq.read_table(p, columns=["group_id", "sample_idx"]).to_pylist()]


def _kill_when_first_shard_commits(verb: str, cfg: Path, work: Path) -> Path:
    """Run ``grao-pipe VERB``, SIGKILL it as soon as its first shard is committed, and return
    the stage directory it left (asserting that the kill landed before the manifest)."""
    proc = subprocess.Popen([*BIN, verb, "-c", str(cfg)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    deadline = time.time() + 120
    while time.time() < deadline and not list(work.glob(f"{verb}/*/shard-*.parquet")):
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (out,) = (work / verb).glob("*/")
    assert not (out / "_manifest.json").exists()  # the kill landed mid-stage
    return out


@pytest.mark.parametrize("verb", ["generate", "score"])
def test_sigkill_mid_stage_then_rerun_loses_and_duplicates_nothing(tiny_config, tmp_path, verb):
    cfg = tiny_config(data={"limit": 24}, generate={"prompts_per_shard": 1, "max_new_tokens": 16})
    if verb == "score":
        assert cli("generate", "-c", str(cfg)).returncode == 0
    out = _kill_when_first_shard_commits(verb, cfg, tmp_path / "work")
    assert 0 < len(list(out.glob("shard-*.parquet"))) < 24

    again = cli(verb, "-c", str(cfg))
    assert again.returncode == 0, again.stderr
    keys = _row_keys(out)
    assert len(keys) == len(set(keys)) == 24 * 4  # nothing lost, nothing duplicated
    assert json.loads((out / "_manifest.json").read_text())["rows"] == 96


def _small_disk_command(mountpoint: Path, size: str, inner: str) -> list[str] | None:
    """A shell command running ``inner`` with a ``size`` tmpfs mounted at ``mountpoint``, in a
    private mount namespace (no trace left on the host); None where mounting is not allowed."""
    script = f'mount -t tmpfs -o size={size} tmpfs "{mountpoint}" && {inner}'
    for prefix in (["unshare", "--mount"], ["unshare", "--user", "--map-root-user", "--mount"]):
        if shutil.which(prefix[0]) and subprocess.run([*prefix, "true"], capture_output=True).returncode == 0:
            probe = subprocess.run([*prefix, "sh", "-c", f'mount -t tmpfs -o size=4k tmpfs "{mountpoint}"'],
                                   capture_output=True)
            if probe.returncode == 0:
                return [*prefix, "sh", "-c", script]
    return None


def test_full_disk_during_generate_is_a_clear_error_and_commits_nothing_partial(tiny_config, tiny_model_dir, tmp_path):
    cfg = tiny_config(model={"path": str(tiny_model_dir)}, data={"limit": 20},
                      generate={"prompts_per_shard": 1, "max_new_tokens": 8})
    work, after = tmp_path / "work", tmp_path / "after"
    work.mkdir()
    after.mkdir()
    # Run on a 64 KiB disk, then copy what it left out of the namespace for inspection.
    inner = (f'{sys.executable} -m grao_pipe.cli generate -c "{cfg}"; rc=$?; '
             f'cp -a "{work}/." "{after}/"; exit $rc')
    cmd = _small_disk_command(work, "64k", inner)
    if cmd is None:
        pytest.skip("this machine does not allow mounting a small tmpfs (needs root or user namespaces)")
    full = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"})
    assert full.returncode == 74, full.stderr  # EX_IOERR, with a message that says what to do
    assert "No space left on device" in full.stderr and "free space and re-run" in full.stderr

    (out,) = (after / "generate").glob("*/")
    assert not (out / "_manifest.json").exists()
    assert not list(out.glob(".tmp-*"))  # the interrupted write left nothing behind
    shards = sorted(out.glob("shard-*.parquet"))
    assert 0 < len(shards) < 20 and all(shard_is_committed(p, "generate") for p in shards)

    again = cli("generate", "-c", str(cfg), f"workdir={after}")  # space again: resume
    assert again.returncode == 0, again.stderr
    keys = _row_keys(out)
    assert len(keys) == len(set(keys)) == 20 * 4
