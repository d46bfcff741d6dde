"""`grao-pipe datasets export` as a user runs it: every format and pairing on the CLI, and an
export killed half-way (SIGKILL of its process group) followed by a re-run that succeeds."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pyarrow.parquet as pq
from cli_runner import BIN, cli

HELPERS = str(Path(__file__).parent.parent / "helpers")

CHAT = [{"messages": [{"role": "user", "content": f"{a}+{b}="}], "reference": str(a + b), "rejected": str(a + b + 1)}
        for a in range(3) for b in range(4)]


def test_export_on_the_cli_survives_a_kill_and_leaves_nothing_behind(tiny_config, tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([HELPERS, os.environ.get("PYTHONPATH", "")]))
    prompts = tmp_path / "chat.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in CHAT))
    cfg = str(tiny_config(data={"prompts": str(prompts)},
                          score={"scorers": [{"kind": "function", "name": "count", "function": "counting_scorer:score"}]}))
    assert cli("generate", "-c", cfg).returncode == 0
    assert cli("score", "-c", cfg).returncode == 0
    (score_dir,) = (tmp_path / "work" / "score").glob("*/")
    (gen_dir,) = (tmp_path / "work" / "generate").glob("*/")
    key = score_dir.name[:8]

    shown = cli("datasets", "show", "-c", cfg, key)
    lineage = json.loads(shown.stdout)["lineage"]
    assert lineage["prompt_set"] == str(prompts) and lineage["scorer_sources"] == {"count": "counting_scorer:score"}
    listed = cli("datasets", "list", "-c", cfg)
    assert listed.returncode == 0 and lineage["prompt_set_sha256"][:12] in listed.stdout

    pairs = cli("datasets", "export", "-c", cfg, key, "--format", "preference", "--pairs", "dataset",
                "--out", str(tmp_path / "hh-pairs"))
    assert pairs.returncode == 0, pairs.stderr
    assert pq.read_table(tmp_path / "hh-pairs" / "train.parquet").num_rows == len(CHAT)

    # SIGKILL after the files are written, before the rename: no --out, a temporary the next run removes.
    out = tmp_path / "exports" / "kto"
    args = ["datasets", "export", "-c", cfg, key, "--format", "kto", "--out", str(out)]
    killed = subprocess.run([*BIN, *args], capture_output=True, text=True, start_new_session=True, timeout=300,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "GRAO_PIPE_KILL_AT": "export.written"})
    assert killed.returncode == -9
    assert not out.exists() and list(out.parent.glob(".tmp-kto.*"))
    again = cli(*args)
    assert again.returncode == 0, again.stderr
    assert pq.read_table(out / "train.parquet").num_rows > 0 and (out / "README.md").is_file()
    assert not list(out.parent.glob(".tmp-*"))

    # SIGKILLs at random instants of the real command: --out is absent or whole, and a re-run finishes.
    rng = random.Random(7)
    for i in range(4):
        dest = tmp_path / "chaos" / f"pc{i}"
        cmd = [*BIN, "datasets", "export", "-c", cfg, key, "--format", "prompt-completion", "--out", str(dest)]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                                env={**os.environ, "HF_HUB_OFFLINE": "1"})
        time.sleep(rng.uniform(0.5, 4.0))
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        assert not dest.exists() or pq.read_table(dest / "train.parquet").num_rows == len(CHAT)
        assert not dest.exists() or (dest / "README.md").is_file()
        if dest.exists():
            continue
        rerun = cli("datasets", "export", "-c", cfg, key, "--format", "prompt-completion", "--out", str(dest))
        assert rerun.returncode == 0, rerun.stderr
        assert pq.read_table(dest / "train.parquet").num_rows == len(CHAT)
    assert not list((tmp_path / "chaos").glob(".tmp-*"))

    # A failed export creates nothing: no empty --out, no parent made for it.
    bad = cli("datasets", "export", "-c", cfg, gen_dir.name[:8], "--format", "kto", "--out", str(tmp_path / "new" / "x"))
    assert bad.returncode == 3 and "needs rewards" in bad.stderr
    assert not (tmp_path / "new").exists()


def test_unimportable_scorer_is_named_and_leaves_no_directory(tiny_config, tmp_path, monkeypatch):
    (tmp_path / "needs_dep.py").write_text("import no_such_dependency_xyz\n\ndef score(p, o, y):\n    return 0.0\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    for fn, expect in (("my_scorers.exact:score", "the file my_scorers/exact.py (or package my_scorers/exact/) "
                                                  "must sit under a directory on PYTHONPATH"),
                       ("needs_dep:score", "module 'needs_dep' was found but its own import of 'no_such_dependency_xyz'")):
        cfg = str(tiny_config(score={"scorers": [{"kind": "function", "name": "x", "function": fn}]}))
        assert cli("generate", "-c", cfg).returncode == 0
        res = cli("score", "-c", cfg)
        assert res.returncode == 2 and "score.scorers[x].function" in res.stderr and expect in res.stderr, res.stderr
        assert "Traceback" not in res.stderr
        work = tmp_path / "work"
        assert not [p for p in (work / "score").glob("*") if p.is_dir()], "a failed score left a directory"
        assert not (work / "rewards").exists() or not any((work / "rewards").rglob("*"))
