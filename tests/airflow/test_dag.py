"""The Airflow DAG under a real Airflow (.venv-airflow), running the real grao-pipe CLI (.venv).

Run with: pipelines/airflow/setup.sh && .venv-airflow/bin/python -m pytest -q tests/airflow
Each DAG run goes through ``dag.test()``: Airflow's own scheduling loop, in this process, with
a SQLite metadata database (see conftest.py). The pipeline is a tiny copy of pipelines/demo.yaml.
"""

from __future__ import annotations

import fcntl
import os
import re
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from airflow.dag_processing.dagbag import DagBag
from airflow.sdk.definitions.mappedoperator import MappedOperator

ROOT = Path(__file__).resolve().parents[2]
DAG_DIR = ROOT / "pipelines" / "airflow"
DAG_ID = "grao_pipe"
STAGES = ("generate", "score", "train")
SHARDS = 2


def grao_pipe_bin() -> str:
    exe = os.environ.get("GRAO_PIPE_BIN") or str(ROOT / ".venv" / "bin" / "grao-pipe")
    if not os.access(exe, os.X_OK):
        pytest.fail(f"the project CLI {exe} is missing: run `make setup` first (these tests run the "
                    "real pipeline with the main venv's grao-pipe), or set GRAO_PIPE_BIN")
    return exe


@pytest.fixture(scope="module")
def dag():
    bag = DagBag(dag_folder=str(DAG_DIR))
    assert bag.import_errors == {}
    return bag.dags[DAG_ID]


def test_dag_structure(dag):
    assert set(dag.task_ids) == {"shard_specs", *STAGES}
    generate, score, train = (dag.get_task(t) for t in STAGES)
    assert isinstance(generate, MappedOperator)  # fanned out with .expand(shard=...)
    assert generate.upstream_task_ids == {"shard_specs"}
    assert score.upstream_task_ids == {"generate"}
    assert train.upstream_task_ids == {"score"}
    assert score.trigger_rule == train.trigger_rule == "none_failed"
    assert dag.max_active_runs == 1 and dag.catchup is False
    assert all(dag.get_task(t).retries > 0 for t in STAGES)
    assert {"config", "workdir", "grao_pipe_bin", "shards", "round", "overrides"} <= set(dag.params)


def run_dag(dag, conf: dict, retries: int = 0) -> dict[str, list[tuple[str, int]]]:
    """One DAG run via dag.test(); returns {task_id: [(state, try_number) per map index]}."""
    for t in dag.tasks:  # production retries wait minutes; the test must not
        t.retries, t.retry_delay = retries, timedelta(0)
    dr = dag.test(run_conf=conf)
    out: dict[str, list[tuple[str, int]]] = {}
    for ti in sorted(dr.get_task_instances(), key=lambda ti: (ti.task_id, ti.map_index)):
        out.setdefault(ti.task_id, []).append((str(ti.state), ti.try_number))
    return out


def states(result: dict[str, list[tuple[str, int]]]) -> dict[str, list[str]]:
    return {task: [s for s, _ in runs] for task, runs in result.items()}


@pytest.fixture(scope="module")
def pipeline(dag, tmp_path_factory):
    """A tiny copy of pipelines/demo.yaml and a first DAG run on it."""
    tmp = tmp_path_factory.mktemp("grao-airflow")
    cfg = yaml.safe_load((ROOT / "pipelines" / "demo.yaml").read_text())
    cfg["name"] = "airflow-tiny"
    cfg["generate"] |= {"num_samples": 4, "max_new_tokens": 3, "batch_size": 6, "prompts_per_shard": 6}
    cfg["train"] |= {"groups_per_step": 4}
    cfg["run"]["rounds"] = 1
    config = tmp / "tiny.yaml"
    config.write_text(yaml.safe_dump(cfg))
    workdir = tmp / "work"
    # The rest through the DAG's params: workdir and key=value overrides reach the CLI.
    conf = {"config": str(config), "workdir": str(workdir), "grao_pipe_bin": grao_pipe_bin(),
            "shards": SHARDS, "overrides": ["data.limit=12", "train.epochs=1"]}
    first = run_dag(dag, conf)
    # The first run's train output; its lock file is <workdir>/train/<key>.lock.
    train_dirs = [m.parent for m in workdir.glob("train/*/_manifest.json")]
    return conf, workdir, first, train_dirs


def cli_status(conf: dict) -> dict[str, str]:
    out = subprocess.run([conf["grao_pipe_bin"], "status", "-c", conf["config"], *conf["overrides"],
                          f"workdir={conf['workdir']}"], capture_output=True, text=True, check=True)
    return dict(re.findall(r"│\s*(generate|score|train)\s*│\s*(\w+)\s*│", out.stdout))


def test_first_run_commits_every_stage(pipeline):
    conf, workdir, first, train_dirs = pipeline
    assert len(train_dirs) == 1
    assert states(first) == {"shard_specs": ["success"], "generate": ["success"] * SHARDS,
                             "score": ["success"], "train": ["success"]}
    assert cli_status(conf) == dict.fromkeys(STAGES, "done")
    for stage in STAGES:
        (manifest,) = workdir.glob(f"{stage}/*/_manifest.json")
        assert yaml.safe_load(manifest.read_text())["stage"] == stage
    assert (train_dirs[0] / "model" / "config.json").is_file()


def test_second_run_skips_cached_stages(dag, pipeline, monkeypatch):
    from airflow.models.variable import Variable

    conf, *_ = pipeline
    # The same settings from the other sources: an Airflow Variable and the environment.
    Variable.set("grao_pipe_config", conf["config"])
    monkeypatch.setenv("GRAO_PIPE_BIN", conf["grao_pipe_bin"])
    try:
        again = run_dag(dag, {k: v for k, v in conf.items() if k not in ("config", "grao_pipe_bin")})
    finally:
        Variable.delete("grao_pipe_config")
    assert states(again) == {"shard_specs": ["success"], "generate": ["skipped"] * SHARDS,
                             "score": ["skipped"], "train": ["skipped"]}


def test_changed_score_config_reruns_score_and_train_only(dag, pipeline):
    conf, workdir, *_ = pipeline
    changed = {**conf, "overrides": [*conf["overrides"], "score.advantage.eps=0.001"]}
    result = run_dag(dag, changed)
    # none_failed: the cached (skipped) generate does not skip score, whose config changed.
    assert states(result) == {"shard_specs": ["success"], "generate": ["skipped"] * SHARDS,
                              "score": ["success"], "train": ["success"]}
    assert cli_status(changed) == dict.fromkeys(STAGES, "done")
    assert len(list(workdir.glob("train/*/_manifest.json"))) == 2  # the old version is kept


def test_locked_stage_is_retried(dag, pipeline):
    conf, _, _, train_dirs = pipeline
    (train_dir,) = train_dirs
    # Hold train's lock as a concurrent grao-pipe would; the stage takes it before looking at
    # its cache, so train exits 75 on every try.
    with open(train_dir.parent / f"{train_dir.name}.lock", "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        result = run_dag(dag, conf, retries=1)
    assert result["train"] == [("failed", 2)]  # tried, retried, then out of retries
    assert states(result)["score"] == ["skipped"]


def test_config_error_fails_without_retry(dag, pipeline):
    conf, *_ = pipeline
    result = run_dag(dag, {**conf, "overrides": ["train.no_such_key=1"]}, retries=2)
    assert result["generate"] == [("failed", 1)] * SHARDS  # exit 2: retrying cannot help
    assert states(result)["score"] == ["upstream_failed"]
