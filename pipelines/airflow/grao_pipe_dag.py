"""Airflow DAG for grao-pipe: generate (one mapped task per --shard k/N) -> score -> train.

Every task runs the grao-pipe CLI, which caches each stage, so re-running the DAG is cheap: a
stage whose output is already there is a skipped task. Settings come from the run's params,
else from the Airflow Variable ``grao_pipe_<name>``, else from the environment (GRAO_PIPE_BIN,
GRAO_PIPE_PROJECT_DIR), else from the defaults below.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from datetime import timedelta
from pathlib import Path
from typing import Any

from airflow.sdk import Param, Variable, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException

log = logging.getLogger(__name__)

# Exit codes of grao-pipe (docs/design-decisions.md); 99 is what we ask for when cached.
CACHED = 99
LOCKED = 75
# Deterministic failures: retrying cannot help, so fail at once instead of burning retries.
NO_RETRY = {2: "config error", 3: "input error", 4: "input stage not finished", 5: "corrupt data"}

# name: (environment variable, default). Looked up when a task runs, in the worker's environment.
DEFAULTS: dict[str, tuple[str | None, str | None]] = {
    "config": (None, "pipelines/demo.yaml"),
    "workdir": (None, None),  # None: the config's own workdir
    "grao_pipe_bin": ("GRAO_PIPE_BIN", "grao-pipe"),
    # Relative config and executable paths resolve here; default: the repository of this file.
    "project_dir": ("GRAO_PIPE_PROJECT_DIR", str(Path(__file__).resolve().parents[2])),
}


def _opt(description: str) -> Param:
    return Param(None, type=["null", "string"], description=description)


def _setting(params: dict[str, Any], name: str) -> Any:
    """The run's param, else the Airflow Variable grao_pipe_<name>, else the environment/default."""
    value = params.get(name) or Variable.get(f"grao_pipe_{name}", default=None)
    env, default = DEFAULTS[name]
    return value or (env and os.environ.get(env)) or default


def _grao_pipe(verb: str, *extra: str) -> None:
    """Run one grao-pipe verb for this run's config; map its exit code to an Airflow outcome."""
    params = get_current_context()["params"]
    project = Path(_setting(params, "project_dir"))
    exe = _setting(params, "grao_pipe_bin")
    if "/" in exe and not os.path.isabs(exe):
        exe = str(project / exe)
    cmd = [exe, verb, "-c", _setting(params, "config"), "--round", str(params["round"]), *extra,
           *params["overrides"]]
    workdir = _setting(params, "workdir")
    if workdir:
        cmd.append(f"workdir={workdir}")
    env = {**os.environ, "GRAO_PIPE_CACHED_EXIT_CODE": str(CACHED)}
    env.setdefault("HF_HUB_OFFLINE", "1")  # the pipeline never downloads at run time
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    log.info("running %s (in %s)", " ".join(cmd), project)
    try:
        # Own process group: if Airflow kills this task (timeout, mark failed), the CLI and its
        # torchrun workers go too, instead of holding the stage lock for the retries.
        proc = subprocess.Popen(cmd, cwd=project, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
    except FileNotFoundError:
        raise AirflowFailException(f"grao-pipe executable {exe!r} not found; set GRAO_PIPE_BIN "
                                   "or the grao_pipe_bin param/Variable") from None
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            log.info("%s", line.rstrip())
        proc.wait()
    except BaseException:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait()
        raise
    rc = proc.returncode
    if rc == CACHED:
        raise AirflowSkipException(f"grao-pipe {verb}: cached, nothing to do")
    if rc == LOCKED:
        # Another run holds the stage's lock: fail this try so Airflow retries after retry_delay.
        raise AirflowException(f"grao-pipe {verb}: locked by another process (exit 75); will retry")
    if rc in NO_RETRY:
        raise AirflowFailException(f"grao-pipe {verb} failed: {NO_RETRY[rc]} (exit {rc})")
    if rc != 0:
        raise AirflowException(f"grao-pipe {verb} failed with exit code {rc}")


@dag(
    dag_id="grao_pipe",
    schedule=None,  # trigger by hand or from another DAG; cached stages make reruns cheap
    catchup=False,
    max_active_runs=1,  # two runs of the same config would only contend for the stage locks
    default_args={"retries": 3, "retry_delay": timedelta(minutes=5)},
    params={
        "config": _opt("config YAML (default pipelines/demo.yaml), relative to project_dir"),
        "workdir": _opt("overrides the config's workdir"),
        "grao_pipe_bin": _opt("grao-pipe executable (default $GRAO_PIPE_BIN or grao-pipe on PATH)"),
        "project_dir": _opt("working directory of the CLI (default: this repository)"),
        "shards": Param(2, type="integer", minimum=1, description="generate workers (--shard k/N)"),
        "round": Param(1, type="integer", minimum=1, description="round r samples from round r-1's model"),
        "overrides": Param([], type="array", items={"type": "string"},
                           description="key=value config overrides, e.g. train.lr=1e-5"),
    },
    tags=["grao-pipe"],
)
def grao_pipe() -> None:
    @task
    def shard_specs(params: dict[str, Any] | None = None) -> list[str]:
        # The fan-out width is a run param, so it is computed at run time for .expand().
        n = int(params["shards"]) if params else 1
        return [f"{k}/{n}" for k in range(n)]

    @task(map_index_template="{{ shard }}")
    def generate(shard: str) -> None:
        get_current_context()["shard"] = shard
        _grao_pipe("generate", "--shard", shard)

    # none_failed: a cached (skipped) upstream must not skip a stage whose own inputs changed.
    @task(trigger_rule="none_failed")
    def score() -> None:
        _grao_pipe("score")

    @task(trigger_rule="none_failed")
    def train() -> None:
        _grao_pipe("train")

    generate.expand(shard=shard_specs()) >> score() >> train()


grao_pipe()
