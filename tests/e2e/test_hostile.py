"""Hostile input through the real CLI: every case ends with the documented exit code and a short
error that names the file, row or key (never a traceback), writes nothing outside the workdir
and reads nothing outside a dataset. The table is documented in docs/operations.md."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from cli_runner import cli

TINY = {"name": "tiny", "data": {"prompts": "builtin:arith", "limit": 8},
        "generate": {"num_samples": 2, "max_new_tokens": 3, "batch_size": 8, "prompts_per_shard": 4},
        "train": {"lr": 1e-3, "groups_per_step": 4, "epochs": 1, "nproc": 2}}


@dataclass(frozen=True)
class Case:
    id: str
    setup: Callable[[Path], list[str]]  # (case dir) -> CLI arguments
    code: int
    message: str  # a regex the error must match


def _config(root: Path, **sections) -> Path:
    tree = {**TINY, "workdir": str(root / "work")}
    for k, v in sections.items():
        tree[k] = {**tree.get(k, {}), **v} if isinstance(v, dict) else v
    path = root / "c.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def _prompts(root: Path, name: str, data: bytes) -> list[str]:
    (root / name).write_bytes(data)
    return ["generate", "-c", str(_config(root, data={"prompts": str(root / name), "limit": None}))]


def _generated(root: Path) -> Path:
    """The generate output copied in from the module's finished run; its directory."""
    (d,) = (root / "work" / "generate").glob("*/")
    return d


def _edit_manifest(root: Path, fn: Callable[[dict], None]) -> None:
    path = _generated(root) / "_manifest.json"
    m = json.loads(path.read_text())
    fn(m)
    path.write_text(json.dumps(m))


def _deleted_shard(root: Path) -> list[str]:
    next(_generated(root).glob("shard-*.parquet")).unlink()
    return ["score", "-c", str(root / "c.yaml")]


def _no_sha(root: Path) -> list[str]:
    _edit_manifest(root, lambda m: m["shards"][0].pop("sha256"))
    return ["score", "-c", str(root / "c.yaml")]


def _wrong_rows(root: Path) -> list[str]:
    _edit_manifest(root, lambda m: (m["shards"][0].update(rows=m["shards"][0]["rows"] + 1), m.update(rows=m["rows"] + 1)))
    return ["datasets", "verify", "-c", str(root / "c.yaml")]


def _symlinked_shard(root: Path) -> list[str]:
    shard = next(_generated(root).glob("shard-*.parquet"))
    outside = root / "elsewhere.parquet"
    shutil.move(shard, outside)
    shard.symlink_to(outside)
    return ["score", "-c", str(root / "c.yaml")]


def _scored_cfg(root: Path) -> Path:
    return root / "c.yaml"


def _corrupt_score_shard(root: Path) -> list[str]:
    (d,) = (root / "work" / "score").glob("*/")
    shard = next(d.glob("shard-*.parquet"))
    shard.write_bytes(shard.read_bytes()[:-20])
    return ["train", "-c", str(_scored_cfg(root))]


TRAIN_CASES = [
    Case("train-corrupt-score-shard", _corrupt_score_shard, 5, r"checksum mismatch with its manifest"),
    Case("train-flex-attention-on-cpu", lambda r: ["train", "-c", str(_scored_cfg(r)),
                                                   "train.attn_implementation=flex_attention"], 2,
         r"flex_attention needs CUDA"),
    Case("train-more-ranks-than-groups", lambda r: ["train", "-c", str(_scored_cfg(r)), "train.nproc=16"], 2,
         r"8 groups with kept rows, which cannot feed 16 ranks"),
    Case("train-learner-fails", lambda r: ["train", "-c", str(_scored_cfg(r)), "train.lr=1e30", "train.epochs=4"], 6,
         r"train \(round 1\) failed: rank \d: FloatingPointError: non-finite loss"),
]

CASES = [
    Case("config-not-utf8", lambda r: (r.joinpath("c.yaml").write_bytes(b"name: \xff\xfe\n"),
                                       ["generate", "-c", str(r / "c.yaml")])[1], 2, r"c.yaml: not UTF-8 text"),
    Case("config-many-errors", lambda r: ["generate", "-c", str(_config(r)), "train.lr=-1", "generate.nsamples=3",
                                          "data.format=csv"], 2, r"3 problems:"),
    Case("one-sample-groups", lambda r: ["generate", "-c", str(_config(r)), "generate.num_samples=1"], 2,
         r"generate.num_samples=1: train.objective=grao needs at least 2 samples"),
    Case("prompts-not-utf8", lambda r: _prompts(r, "p.jsonl", b'{"prompt": "\xff1+1=", "reference": "2"}\n' * 3), 3,
         r"3 rows quarantined: p.jsonl:1: not UTF-8 text"),
    Case("parquet-not-parquet", lambda r: _prompts(r, "p.parquet", b"PAR1 this is not parquet"), 3,
         r"p.parquet: not a readable Parquet file"),
    Case("gz-not-gzip", lambda r: _prompts(r, "p.jsonl.gz", b'{"prompt": "1+1=", "reference": "2"}\n'), 3,
         r"p.jsonl.gz: not a readable gzip file"),
    Case("hh-past-quarantine-share", lambda r: _prompts(r, "hh.jsonl", b'{"chosen": "\\n\\nHuman: a?\\n\\nAssistant: b", '
                                                        b'"rejected": "\\n\\nHuman: a?\\n\\nAssistant: c"}\nnot json\n'), 3,
         r"1 of 2 rows are unusable \(hh.jsonl:2: not valid JSON"),
    Case("workdir-is-a-file", lambda r: (r.joinpath("work").write_text("x"), ["generate", "-c", str(_config(r))])[1], 3,
         r"workdir .*work is an existing file"),
    Case("shard-deleted", _deleted_shard, 5, r"shard-0000\d-of-00002.parquet: shard missing \(its manifest lists it\)"),
    Case("manifest-without-sha256", _no_sha, 5, r"_manifest.json: malformed manifest \(shards.0.sha256: Field required"),
    Case("rows-wrong", _wrong_rows, 5, r"shard-00000-of-00002.parquet: \d+ rows, its manifest says \d+"),
    Case("symlinked-shard", _symlinked_shard, 5, r"is a symlink; a dataset's files must be regular files"),
    Case("verify-missing-workdir", lambda r: ["datasets", "verify", "-w", str(r / "nowhere")], 3,
         r"workdir .*nowhere does not exist"),
]


def _scorer_raising_at_import(root: Path) -> list[str]:
    (root / "boom.py").write_text("raise ZeroDivisionError('the scorer module fails at import')\n")
    return ["score", "-c", str(_config(root, score={"scorers": [{"kind": "function", "name": "b", "function": "boom:score"}]}))]


def _nul_in_shard_name(root: Path) -> list[str]:
    _edit_manifest(root, lambda m: m["shards"][0].update(name="shard-00000\x00.parquet"))
    return ["score", "-c", str(root / "c.yaml")]


def _listed_twice(root: Path) -> list[str]:
    _edit_manifest(root, lambda m: (m["shards"].append(m["shards"][0]), m.update(rows=m["rows"] + m["shards"][0]["rows"])))
    return ["score", "-c", str(root / "c.yaml")]


def _entry_dropped(root: Path) -> list[str]:
    _edit_manifest(root, lambda m: (m.update(rows=m["rows"] - m["shards"][1]["rows"]), m["shards"].pop(1)))
    return ["score", "-c", str(root / "c.yaml")]


def _says_train(root: Path) -> list[str]:
    _edit_manifest(root, lambda m: m.update(stage="train", stats={}))
    return ["score", "-c", str(root / "c.yaml")]


def _broken_model(root: Path, damage: str) -> list[str]:
    from grao_pipe.config import DataConfig, TinyModelConfig
    from grao_pipe.models.tiny import build_tiny_model
    from grao_pipe.prompts import load_prompt_set
    from grao_pipe.storage import local_input

    data = DataConfig()
    corpus = [t for p in load_prompt_set(local_input(data.prompts), data).prompts for t in (p.text or "", p.reference)]
    model = build_tiny_model(TinyModelConfig(), corpus, root / "models")
    if damage == "config":
        (model / "config.json").write_text("{")
    else:
        w = model / "model.safetensors"
        w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    return ["generate", "-c", str(_config(root, model={"path": str(model)}))]


_HH_NO_HUMAN = (b'{"chosen": "\\n\\nAssistant: ok", "rejected": "\\n\\nAssistant: no"}\n'
                b'{"chosen": "\\n\\nAssistant: yes", "rejected": "\\n\\nAssistant: no"}\n')

# Cases of issue 20 (a hostile user's session): each was a traceback, a wrong code or silent.
MORE_CASES = [
    Case("override-glob-not-yaml", lambda r: ["generate", "-c", str(_config(r)), "data.prompts=*.jsonl"], 3,
         r"data.prompts: prompt file \*.jsonl does not exist"),
    Case("override-at-not-yaml", lambda r: ["generate", "-c", str(_config(r)), "name=@nightly", "train.lr=-1"], 2,
         r"overrides: config key 'train.lr': Input should be greater than 0"),
    Case("override-bracket-for-a-number", lambda r: ["generate", "-c", str(_config(r)), "train.lr=[1e-3"], 2,
         r"train.lr.*valid number"),
    Case("lr-inf", lambda r: ["generate", "-c", str(_config(r)), "train.lr=.inf"], 2, r"train.lr.*finite number"),
    Case("grad-clip-inf", lambda r: ["generate", "-c", str(_config(r)), "train.grad_clip=.inf"], 2,
         r"train.grad_clip.*finite number"),
    Case("scorer-weight-nan", lambda r: ["generate", "-c", str(_config(r)),
                                         "score.scorers=[{kind: function, weight: .nan}]"], 2, r"weight.*finite number"),
    Case("prompts-a-directory", lambda r: (r.joinpath("p").mkdir(), ["generate", "-c", str(_config(r)),
                                           f"data.prompts={r / 'p'}"])[1], 3, r"data.prompts: .*p is a directory"),
    Case("round-negative", lambda r: ["generate", "-c", str(_config(r)), "--round", "-1"], 2,
         r"--round -1: rounds are numbered from 1"),
    Case("json-out-missing-folder", lambda r: ["generate", "-c", str(_config(r)), "--json-out", str(r / "no" / "o.json")],
         2, r"--json-out .*o.json: folder .*no does not exist"),
    Case("prompt-5000-digit-integer", lambda r: _prompts(r, "p.jsonl", b'{"prompt": ' + b"9" * 5000 + b', "reference": "2"}\n'),
         3, r"p.jsonl:1: not usable JSON \(Exceeds the limit"),
    Case("prompt-100k-nesting", lambda r: _prompts(r, "p.jsonl", b'{"prompt": ' + b"[" * 100_000 + b"]" * 100_000
                                                   + b', "reference": "2"}\n'), 3, r"p.jsonl:1: not usable JSON \(nested too deeply\)"),
    Case("hh-without-human-turn", lambda r: _prompts(r, "hh.jsonl", _HH_NO_HUMAN), 3,
         r"hh.jsonl:1: no Human turn before the final Assistant turn"),
    Case("model-config-not-json", lambda r: _broken_model(r, "config"), 3, r"model .* cannot be loaded"),
    Case("model-weights-truncated", lambda r: _broken_model(r, "weights"), 3, r"model .* cannot be loaded"),
    Case("max-new-tokens-fill-the-context", lambda r: ["generate", "-c", str(_config(r)), "generate.max_new_tokens=128"],
         2, r"generate.max_new_tokens=128 leaves no room for a prompt"),
]

# The same, on a finished generate output copied in.
GENERATED_CASES = [
    Case("scorer-raises-at-import", _scorer_raising_at_import, 2,
         r"score.scorers\[b\].function: cannot import module 'boom' \(ZeroDivisionError"),
    Case("nul-in-shard-name", _nul_in_shard_name, 5, r"not listed in its manifest"),
    Case("nul-in-shard-name-verify", lambda r: (_nul_in_shard_name(r), ["datasets", "verify", "-c", str(r / "c.yaml")])[1],
         5, r"shard name 'shard-00000\\x00.parquet' points outside the dataset"),
    Case("shard-listed-twice", _listed_twice, 5, r"listed twice"),
    Case("manifest-entry-dropped", _entry_dropped, 5, r"not listed in its manifest"),
    Case("manifest-says-train", _says_train, 5, r"says stage 'train', but the directory holds generate output"),
]


@pytest.fixture(scope="module")
def scored(tmp_path_factory) -> Path:
    """One finished generate + score output (tiny)."""
    root = tmp_path_factory.mktemp("scored")
    for verb in ("generate", "score"):
        out = cli(verb, "-c", str(_config(root)))
        assert out.returncode == 0, out.stderr
    return root / "work"


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    """One finished generate output (tiny), copied into each case that needs it."""
    root = tmp_path_factory.mktemp("generated")
    out = cli("generate", "-c", str(_config(root)))
    assert out.returncode == 0, out.stderr
    return root / "work"


def _tree(root: Path, skip: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*")
            if p.is_file() and not p.is_relative_to(skip) and "__pycache__" not in p.parts}


ALL = CASES + MORE_CASES + GENERATED_CASES + TRAIN_CASES


@pytest.mark.parametrize("case", ALL, ids=[c.id for c in ALL])
def test_hostile_input(case: Case, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    if case.id in ("shard-deleted", "manifest-without-sha256", "rows-wrong", "symlinked-shard") or case in GENERATED_CASES:
        shutil.copytree(request.getfixturevalue("generated"), tmp_path / "work", symlinks=True)
        _config(tmp_path)
    if case in TRAIN_CASES:
        shutil.copytree(request.getfixturevalue("scored"), tmp_path / "work", symlinks=True)
        _config(tmp_path)
    args = case.setup(tmp_path)
    before = _tree(tmp_path, tmp_path / "work")
    out = cli(*args, cwd=tmp_path)
    assert out.returncode == case.code, out.stderr
    assert "Traceback" not in out.stderr + out.stdout
    error = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1, out.stderr
    import re

    assert re.search(case.message, out.stderr), out.stderr
    # Nothing written outside the workdir (the case's own inputs are all there is).
    assert _tree(tmp_path, tmp_path / "work") == before
    if case.code in (2, 5) and case in TRAIN_CASES:  # caught before the learner started
        assert not list((tmp_path / "work").glob("train/*/train.log"))


def test_a_malformed_hh_line_is_quarantined_and_the_run_goes_on(tmp_path: Path) -> None:
    good = {"chosen": "\n\nHuman: 1+1=\n\nAssistant: 2", "rejected": "\n\nHuman: 1+1=\n\nAssistant: 3"}
    lines = [json.dumps(good).replace("1+1", f"{i}+1") for i in range(11)]
    lines.insert(5, '{"chosen": "\\n\\nHuman: broken')
    (tmp_path / "hh.jsonl").write_text("\n".join(lines) + "\n")
    out = cli("generate", "-c", str(_config(tmp_path, data={"prompts": str(tmp_path / "hh.jsonl"), "limit": None})))
    assert out.returncode == 0, out.stderr
    assert "rows quarantined 1" in out.stderr
    (d,) = (tmp_path / "work" / "generate").glob("*/")
    assert [json.loads(x) for x in (d / "_quarantine.jsonl").read_text().splitlines()] == [
        {"row": 6, "reason": "not valid JSON (Invalid control character at)"}]


def test_trust_remote_code_is_warned_about_naming_the_files(tmp_path: Path, tiny_model_dir: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    (model / "modeling_custom.py").write_text("# custom code a model may ship\n")
    out = cli("generate", "-c", str(_config(tmp_path, model={"path": str(model), "trust_remote_code": True})))
    assert out.returncode == 0, out.stderr
    assert "WARNING: trust_remote_code=true" in out.stderr and "modeling_custom.py" in out.stderr


def test_ctrl_c_exits_130_and_the_next_run_resumes(tmp_path: Path) -> None:
    import signal
    import subprocess
    import time

    from cli_runner import BIN

    cfg = _config(tmp_path, data={"limit": 16}, generate={"prompts_per_shard": 1, "max_new_tokens": 16})
    proc = subprocess.Popen([*BIN, "generate", "-c", str(cfg)], stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    deadline = time.time() + 120
    while time.time() < deadline and not list((tmp_path / "work").glob("generate/*/shard-*.parquet")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err and "Aborted" not in err
    again = cli("generate", "-c", str(cfg))
    assert again.returncode == 0, again.stderr


@pytest.mark.parametrize("sig, code", [("SIGTERM", 143), ("SIGHUP", 129)])
def test_sigterm_and_sighup_print_one_line_and_exit_128_plus_n(tmp_path: Path, sig: str, code: int) -> None:
    """A scheduler's timeout (SIGTERM) or a closed terminal (SIGHUP): one line, 128 + N, and the
    next run resumes."""
    import signal
    import subprocess
    import time

    from cli_runner import BIN

    cfg = _config(tmp_path, data={"limit": 16}, generate={"prompts_per_shard": 1, "max_new_tokens": 16})
    proc = subprocess.Popen([*BIN, "generate", "-c", str(cfg)], stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    deadline = time.time() + 120
    while time.time() < deadline and not list((tmp_path / "work").glob("generate/*/shard-*.parquet")):
        time.sleep(0.05)
    proc.send_signal(getattr(signal, sig))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert f"terminated by {sig}: every shard committed so far is kept" in err and "Traceback" not in err
    again = cli("generate", "-c", str(cfg))
    assert again.returncode == 0, again.stderr
