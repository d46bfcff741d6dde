"""The real CLI in subprocesses: a full generate -> score -> train round with torchrun (2 ranks,
gloo), the cache on re-run, and the bad-input contract (one-line error, exit code, nothing
that looks complete)."""

import json
import os
import subprocess
import sys
from pathlib import Path

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
    # answers.parquet: the same rows as answers.jsonl, each with a prompt id unique in the set.
    import pyarrow.parquet as pq

    ev_dir = Path(json.loads(out_json.read_text())["directory"])
    table = pq.read_table(ev_dir / "answers.parquet").to_pylist()
    jsonl = [json.loads(line) for line in (ev_dir / "answers.jsonl").read_text().splitlines()]
    assert [{k: r[k] for k in jsonl[0]} for r in table] == jsonl
    assert len({r["prompt_id"] for r in table}) == 12 and [r["prompt_index"] for r in table] == list(range(12))
    # No eval.prompts: the training prompts, as an explicit and visible choice.
    assert res["held_out"] is False and "eval.prompts is not set" in ev.stderr and "TRAINING" in ev.stdout
    assert cli("eval", "-c", str(cfg), "eval.limit=12").stdout.count("(cached)") == 1
    held = cli("eval", "-c", str(cfg), "eval.limit=4", "eval.prompts=builtin:arith", "--json-out", str(out_json))
    assert held.returncode == 0 and "eval.prompts is not set" not in held.stderr
    assert json.loads(out_json.read_text())["stats"]["held_out"] is True


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
    assert again.returncode == 99, again.stderr  # everything cached: the skip code for schedulers
    for verb in ("generate", "score", "train"):
        assert cli(verb, "-c", str(cfg), "--cached-exit-code", "99").returncode == 99
        assert cli(verb, "-c", str(cfg)).returncode == 0  # default: cached is success


def _status_without_torch(cfg, *overrides):
    """`grao-pipe status` in a process where importing torch fails."""
    code = ("import sys; sys.modules['torch'] = None; from grao_pipe.cli import main; "
            f"main(['status', '-c', {str(cfg)!r}, *{list(overrides)!r}])")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "200"}, timeout=120)


def test_status_is_read_only_and_needs_no_torch(tiny_config, tmp_path):
    cfg = tiny_config()
    fresh = _status_without_torch(cfg)
    assert fresh.returncode == 0, fresh.stderr
    assert "missing" in fresh.stdout and "waiting" in fresh.stdout
    assert not (tmp_path / "work").exists()  # it computed keys without building the tiny model
    assert cli("run", "-c", str(cfg)).returncode == 0
    before = sorted(p for p in (tmp_path / "work").rglob("*"))
    done = _status_without_torch(cfg)
    assert done.returncode == 0 and done.stdout.count("done") == 3, done.stderr
    assert sorted(p for p in (tmp_path / "work").rglob("*")) == before


def test_keys_do_not_depend_on_how_the_stages_were_launched(tiny_config, tmp_path):
    """`run` in one process and the verbs one by one (as the Airflow DAG calls them, here without
    HF_HUB_OFFLINE in the environment) give the same key to every stage, round 2's included."""
    cfg = tiny_config(train={"nproc": 1})
    assert cli("run", "-c", str(cfg), f"workdir={tmp_path / 'a'}").returncode == 0
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    for verb in ("generate", "score", "train"):
        out = subprocess.run([*BIN, verb, "-c", str(cfg), f"workdir={tmp_path / 'b'}"], capture_output=True,
                             text=True, env=env, timeout=600)
        assert out.returncode == 0, out.stderr
    import re

    tables = [_status_without_torch(cfg, f"workdir={tmp_path / w}", "run.rounds=2").stdout for w in ("a", "b")]
    assert tables[0].count("done") == 3 and "missing" in tables[0]  # round 2's generate has a key
    keys = [re.findall(r"\b[0-9a-f]{16}\b", t) for t in tables]
    assert len(keys[0]) == 4 and keys[0] == keys[1]
