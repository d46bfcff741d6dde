"""Per-step metrics behind one interface (torchtune's ``metric_logging`` shape): JSONL always
(the train stage reads it for its manifest), TensorBoard, Weights & Biases and MLflow on demand
(``train.logging.backends``). Rank 0 logs; a resumed run drops what was logged after its
checkpoint, so no step appears twice.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from grao_pipe.config import LoggingConfig

Scalars = Mapping[str, float | int | None]


class MetricLogger(Protocol):
    def log(self, step: int, metrics: Scalars) -> None: ...

    def close(self) -> None: ...


def _numbers(metrics: Scalars) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


class JsonlLogger:
    """``metrics.jsonl``: one line per optimizer step, appended (a crash keeps what was logged)."""

    def __init__(self, path: Path, start_step: int):
        self.path = path
        if start_step == 0:
            path.unlink(missing_ok=True)
        elif path.exists():  # resumed: drop lines logged after the checkpoint
            kept = path.read_text().splitlines()[:start_step]
            path.write_text("".join(line + "\n" for line in kept))

    def log(self, step: int, metrics: Scalars) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")

    def close(self) -> None:
        pass


class TensorBoardLogger:
    """Event files under ``<train dir>/tensorboard``; events from ``start_step`` on are purged."""

    def __init__(self, log_dir: Path, start_step: int):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(log_dir), purge_step=start_step or None)

    def log(self, step: int, metrics: Scalars) -> None:
        for k, v in _numbers(metrics).items():
            self.writer.add_scalar(f"train/{k}", v, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbLogger:
    """A W&B run (offline by default: ``wandb sync <train dir>/wandb/offline-run-*`` uploads it).
    The run id is the stage key, so a resumed train stage continues the same run."""

    def __init__(self, cfg: LoggingConfig, out: Path, run_id: str, config: Mapping[str, Any], start_step: int):
        import wandb

        os.environ.setdefault("WANDB_SILENT", "true")
        self.run = wandb.init(project=cfg.wandb_project, dir=str(out), id=run_id, name=run_id, mode=cfg.wandb_mode,
                              config=dict(config), resume="allow" if start_step else None)

    def log(self, step: int, metrics: Scalars) -> None:
        self.run.log({f"train/{k}": v for k, v in _numbers(metrics).items()}, step=step)

    def close(self) -> None:
        self.run.finish()


class MlflowLogger:
    """An MLflow run in ``train.logging.mlflow_uri`` (default: a local file store under the train
    directory, ``<train dir>/mlruns``), named after the stage key."""

    def __init__(self, cfg: LoggingConfig, out: Path, run_id: str, config: Mapping[str, Any]):
        # MLflow 3 keeps the plain-file tracking store in maintenance mode behind this switch;
        # it is what works without a database or a server.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow.tracking import MlflowClient

        uri = cfg.mlflow_uri or (out / "mlruns").resolve().as_uri()
        self.client = MlflowClient(uri)
        exp = self.client.get_experiment_by_name(cfg.mlflow_experiment)
        exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(cfg.mlflow_experiment)
        runs = self.client.search_runs([exp_id], filter_string=f"tags.mlflow.runName = '{run_id}'")
        self.run_id = runs[0].info.run_id if runs else self.client.create_run(exp_id, run_name=run_id).info.run_id
        if not runs:
            for k, v in _flat(config).items():
                self.client.log_param(self.run_id, k, v)

    def log(self, step: int, metrics: Scalars) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in _numbers(metrics).items()])

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


def _flat(tree: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out |= _flat(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = str(v)[:500]
    return out


class Loggers:
    """Every configured logger, called together."""

    def __init__(self, loggers: list[MetricLogger]):
        self.loggers = loggers

    def log(self, step: int, metrics: Scalars) -> None:
        for lg in self.loggers:
            lg.log(step, metrics)

    def close(self) -> None:
        for lg in self.loggers:
            lg.close()


def make_loggers(cfg: LoggingConfig, out: Path, run_id: str, config: Mapping[str, Any], start_step: int) -> Loggers:
    loggers: list[MetricLogger] = [JsonlLogger(out / "metrics.jsonl", start_step)]
    for backend in cfg.backends:
        if backend == "tensorboard":
            loggers.append(TensorBoardLogger(out / "tensorboard", start_step))
        elif backend == "wandb":
            loggers.append(WandbLogger(cfg, out, run_id, config, start_step))
        else:
            loggers.append(MlflowLogger(cfg, out, run_id, config))
    return Loggers(loggers)
