"""The real CLI in subprocesses: a full generate -> score -> train round with torchrun (2 ranks,
gloo), the cache on re-run, and the bad-input contract (one-line error, exit code, nothing
that looks complete)."""

import json
import os
import subprocess
import sys

import pytest
from cli_runner import BIN, cli


def test_help_works_without_torch():
    code = "import sys; sys.modules['torch'] = None; from grao_pipe.cli import main; main(['--help'])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and "generate" in out.stdout and "train" in out.stdout


def test_full_round_then_cached(tiny_config, tmp_path):
    cfg = tiny_config()
    report = tmp_path / "report.json"
    first = cli("run", "-c", str(cfg), "--report-json", str(report))
    assert first.returncode == 0, first.stderr
    work = tmp_path / "work"
    (train_dir,) = list((work / "train").glob("*/"))
    assert (train_dir / "model" / "config.json").is_file()
    assert (train_dir / "model" / "model.safetensors").is_file()
    metrics = [json.loads(x) for x in (train_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 3  # 12 groups / 4 per step, 1 epoch
    assert {"loss", "loss_exploration", "loss_imitation", "loss_alignment", "grad_norm"} <= set(metrics[0])
    for m in metrics:
        parts = m["loss_exploration"] + m["loss_imitation"] + m["loss_alignment"]
        assert parts == pytest.approx(m["loss"], abs=1e-5)
    summary = json.loads(report.read_text())
    assert summary[0]["samples"] == 48 and -1.0 <= summary[0]["mean_reward"] <= 1.0
    # The trained model differs from the one that generated the round.
    manifest = json.loads((train_dir / "_manifest.json").read_text())
    assert manifest["shards"][0]["sha256"] != manifest["inputs"]["model"]

    second = cli("run", "-c", str(cfg))
    assert second.returncode == 0, second.stderr
    assert second.stderr.count("cached, nothing to do") == 3

    status = cli("status", "-c", str(cfg))
    assert status.returncode == 0 and status.stdout.count("done") == 3

    out_json = tmp_path / "eval.json"
    ev = cli("eval", "-c", str(cfg), "eval.limit=12", "--json-out", str(out_json))
    assert ev.returncode == 0, ev.stderr
    res = json.loads(out_json.read_text())["stats"]
    assert res["n_prompts"] == 12 and res["nag"]["net"]["n"] == 12 - max(res["invalid"].values())
    for group in ("ras", "nag"):
        for e in res[group].values():
            assert e["low"] <= e["value"] <= e["high"]
    assert "RAS strict" in ev.stdout and "NAG net" in ev.stdout
    assert cli("eval", "-c", str(cfg), "eval.limit=12").stdout.count("(cached)") == 1


def test_misspelt_key_fails_with_its_name(tiny_config, tmp_path):
    out = cli("generate", "-c", str(tiny_config()), "generate.num_sampels=2")
    assert out.returncode == 2
    assert "unknown config key 'generate.num_sampels'" in out.stderr
    assert not (tmp_path / "work" / "generate").exists()


def test_malformed_prompt_row_is_named(tiny_config, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "1+1=", "reference": "2"}\n{"prompt": 5, "reference": "3"}\n')
    out = cli("generate", "-c", str(tiny_config(data={"prompts": str(bad), "limit": None})))
    assert out.returncode == 3 and "bad.jsonl:2" in out.stderr
    assert not list((tmp_path / "work").glob("generate/*/_manifest.json"))


def test_empty_prompt_set(tiny_config, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    out = cli("generate", "-c", str(tiny_config(data={"prompts": str(empty), "limit": None})))
    assert out.returncode == 3 and "has no usable rows" in out.stderr


def test_stage_before_its_input(tiny_config, tmp_path):
    out = cli("train", "-c", str(tiny_config()))
    assert out.returncode == 4 and "run 'grao-pipe" in out.stderr
    assert not (tmp_path / "work" / "train").exists()


def test_concurrent_runs_of_one_stage_lock(tiny_config, tmp_path):
    cfg = tiny_config(train={"epochs": 6})
    assert cli("generate", "-c", str(cfg)).returncode == 0
    assert cli("score", "-c", str(cfg)).returncode == 0
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    first = subprocess.Popen([*BIN, "train", "-c", str(cfg)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    import time

    deadline = time.time() + 60
    while time.time() < deadline and not list((tmp_path / "work").glob("train/*/spec.json")):
        time.sleep(0.2)  # the first run holds the lock once it has written its spec
    second = cli("train", "-c", str(cfg))
    assert second.returncode == 75 and "being run by another process" in second.stderr
    assert first.wait(timeout=300) == 0
    again = cli("run", "-c", str(cfg), "--cached-exit-code", "99")
    assert again.returncode == 99  # everything cached: the skip code for schedulers
    for verb in ("generate", "score", "train"):
        assert cli(verb, "-c", str(cfg), "--cached-exit-code", "99").returncode == 99
        assert cli(verb, "-c", str(cfg)).returncode == 0  # default: cached is success
