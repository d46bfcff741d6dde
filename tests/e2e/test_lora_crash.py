"""Kill-and-resume of a LoRA train stage with the real CLI: SIGKILL of the process group mid-run,
mid-export (adapter written, merged model half-written) and after the export, then a plain
re-run that ends with the uninterrupted run's losses and, bit for bit, its adapter and merged
weights."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from cli_runner import BIN, cli
from safetensors.torch import load_file
from tiny import TINY, merge

pytest.importorskip("peft")

# 12 groups, 4 a step: 6 steps, a checkpoint every 2; one rank (the collectives are tested elsewhere).
SECTIONS = {"train": {"epochs": 2, "checkpoint_every": 2, "nproc": 1, "lora": {"r": 4, "alpha": 8},
                      "export": "both", "lr": 1e-2}}
PHASES = ["train.checkpoint:2", "train.export.adapter", "train.export", "train.exported"]


def _losses(train_dir: Path) -> list[float]:
    return [json.loads(x)["loss"] for x in (train_dir / "metrics.jsonl").read_text().splitlines()]


def _weights(train_dir: Path) -> dict:
    return {**{f"adapter:{k}": v for k, v in load_file(str(train_dir / "adapter" / "adapter_model.safetensors")).items()},
            **{f"model:{k}": v for k, v in load_file(str(train_dir / "model" / "model.safetensors")).items()}}


def test_lora_kill_at_every_phase_then_a_plain_rerun_is_bit_exact(tmp_path):
    import yaml

    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(merge({**TINY, "workdir": str(tmp_path / "work")}, SECTIONS)))
    for verb in ("generate", "score"):
        assert cli(verb, "-c", str(cfg)).returncode == 0
    shutil.copytree(tmp_path / "work", tmp_path / "straight")
    done = cli("train", "-c", str(cfg), f"workdir={tmp_path / 'straight'}")
    assert done.returncode == 0, done.stderr
    (straight,) = (tmp_path / "straight" / "train").glob("*/")
    losses, weights = _losses(straight), _weights(straight)

    workdir = f"workdir={tmp_path / 'work'}"
    for phase in PHASES:
        proc = subprocess.Popen([*BIN, "train", "-c", str(cfg), workdir], stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True, start_new_session=True,
                                env={**os.environ, "HF_HUB_OFFLINE": "1", "GRAO_PIPE_KILL_AT": phase})
        assert proc.wait(timeout=300) == -signal.SIGKILL, f"{phase}: {proc.stderr.read() if proc.stderr else ''}"
        (train_dir,) = (tmp_path / "work" / "train").glob("*/")
        assert not (train_dir / "_manifest.json").exists(), phase
    again = cli("train", "-c", str(cfg), workdir)
    assert again.returncode == 0, again.stderr
    assert _losses(train_dir) == pytest.approx(losses, abs=1e-6)
    got = _weights(train_dir)
    assert got.keys() == weights.keys() and all((got[k] == weights[k]).all() for k in got)
    assert (train_dir / "adapter" / "adapter_config.json").read_bytes() == \
        (straight / "adapter" / "adapter_config.json").read_bytes()
