"""A non-terminal run (Airflow, cron, nohup) shows every stage's progress as plain lines."""

import re

from grao_pipe import progress
from helpers.cli_runner import cli


def test_non_tty_run_prints_progress_lines_for_every_stage(tiny_config, tmp_path, monkeypatch):
    monkeypatch.setenv(progress.ENV_EVERY, "0.2")
    cfg = tiny_config()
    run = cli("run", "-c", str(cfg))  # stdout and stderr are pipes: no TTY
    assert run.returncode == 0, run.stderr
    lines = [x for x in run.stderr.splitlines() if x.startswith("progress ")]
    for stage, unit in (("generate", "prompts"), ("score", "rows"), ("train", "steps")):
        assert f"progress {stage}: started" in lines
        mine = [got for x in lines if x.startswith(f"progress {stage}: ") and (got := progress.parse_line(x))]
        assert mine, f"no progress line for {stage}:\n{run.stderr}"
        assert mine[-1]["done"] == mine[-1]["total"] and mine[-1]["unit"] == unit
    gen = next(x for x in lines if x.startswith("progress generate: ") and "done" in x)
    assert re.search(r"\d+ tokens, \d+ tok/s", gen) and "prompts/s" in gen and "| errors 0" in gen
    # The learner wrote one line per step into train.log as it went (3 steps), read back by the stage.
    (train_dir,) = (tmp_path / "work" / "train").glob("*/")
    steps = [progress.parse_line(x) for x in (train_dir / "train.log").read_text().splitlines()
             if x.startswith("progress train: ")]
    assert [s["done"] for s in steps] == [1, 2, 3] and all(s["tokens"] > 0 for s in steps)

    ev = cli("eval", "-c", str(cfg), "eval.limit=6")
    assert ev.returncode == 0, ev.stderr
    assert re.search(r"^progress eval: 12/12 answers", ev.stderr, re.M), ev.stderr
    # status lists eval beside the round's stages (done once eval ran with these settings).
    status = cli("status", "-c", str(cfg), "eval.limit=6")
    assert status.returncode == 0 and re.search(r"│ 1 +│ eval +│ done", status.stdout), status.stdout
