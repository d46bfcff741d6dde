"""Stage 3: launch the FSDP2 learner under torchrun on score's shards; export the model."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq

from grao_pipe.config import PipelineConfig, TrainConfig
from grao_pipe.errors import ConfigError, InputError, StageFailed
from grao_pipe.models import policy_digest
from grao_pipe.remote import ensure_local, is_url
from grao_pipe.stages.common import (
    Outcome,
    StageRef,
    Timer,
    prepare,
    require,
    score_ref,
    stage_lock,
    train_ref,
)
from grao_pipe.store import digest, member, write_manifest


def read_metrics(directory: Path) -> list[dict]:
    path = directory / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def required_columns(cfg: TrainConfig) -> dict[str, str]:
    """Columns the objective needs non-null, with what to do when they are missing."""
    need: dict[str, str] = {}
    ref_hint = "set score.reference_logprobs=true and re-run score"
    beh_hint = "generate with a backend that returns log-probs (hf, vllm)"
    if cfg.objective == "dpo" and cfg.dpo_pairs == "samples":
        need |= {"ref_logprobs": ref_hint, "ref_reference_logprobs": ref_hint}
    if cfg.objective == "dpo" and cfg.dpo_pairs == "dataset":
        pairs_hint = "use a prompt set with a rejected answer per row (data.rejected_field), or train.dpo_pairs=samples"
        need |= {"reference_rejected_token_ids": pairs_hint, "ref_reference_logprobs": ref_hint,
                 "ref_reference_rejected_logprobs": ref_hint}
    if (cfg.objective == "grpo" and cfg.grpo_kl > 0) or (cfg.objective == "ppo" and cfg.ppo_kl > 0):
        need["ref_logprobs"] = ref_hint
    if cfg.objective == "grpo" and cfg.grpo_clip is not None:
        # Without clipping the ratio is taken against stop_grad(πθ): the on-policy surrogate,
        # which ignores how far the stored samples are from the current policy.
        need["behaviour_logprobs"] = (f"{beh_hint}, or set train.grpo_clip=null for the unclipped on-policy "
                                      "surrogate (no correction for stale rollouts)")
    if cfg.objective == "ppo":
        need["behaviour_logprobs"] = f"{beh_hint}: PPO's ratio is taken against them"
    if cfg.importance_weights:
        need["behaviour_logprobs"] = f"{beh_hint}, or set train.importance_weights=false"
    return need


def check_columns(cfg: TrainConfig, shards: list[Path]) -> None:
    """Fail before training starts if a kept row lacks a column the objective needs."""
    need = required_columns(cfg)
    for path in shards if need else []:
        present = set(pq.read_schema(path).names)
        table = pq.read_table(path, columns=[c for c in [*need, "keep"] if c in present])
        for col, hint in need.items():
            if col not in table.column_names:
                raise InputError(f"{path}: train.objective={cfg.objective} needs column {col!r}, absent from the "
                                 f"shard (written by an older grao-pipe); {hint}")
            nulls = pc.sum(pc.and_(table["keep"], pc.is_null(table[col]))).as_py() or 0
            if nulls:
                raise InputError(f"{path}: train.objective={cfg.objective} needs column {col!r}, "
                                 f"null in {nulls} rows; {hint}")


def torchrun_command(cfg: TrainConfig, spec_path: Path, run_id: str) -> list[str]:
    """The learner's launch: standalone on one node; with several nodes, a static rendezvous at
    node 0's ``rdzv_endpoint`` where each node states its own rank."""
    cmd = [sys.executable, "-m", "torch.distributed.run"]
    if cfg.nnodes == 1:
        cmd += ["--standalone", "--nnodes=1"]
    else:
        cmd += [f"--nnodes={cfg.nnodes}", f"--node-rank={cfg.node_rank}", "--rdzv-backend=static",
                f"--rdzv-endpoint={cfg.rdzv_endpoint}", f"--rdzv-id={run_id}"]
    return [*cmd, f"--nproc-per-node={cfg.nproc}", "-m", "grao_pipe.learner.worker", str(spec_path)]


def check_tensorboard(cfg: TrainConfig) -> None:
    if cfg.tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise ConfigError("train.tensorboard=true needs the tensorboard package: pip install tensorboard")


def run(cfg: PipelineConfig, round_: int = 1, force: bool = False) -> Outcome:
    if cfg.train.nnodes > 1 and is_url(cfg.workdir):
        raise ConfigError("train.nnodes > 1 needs a workdir every node shares (a shared filesystem); "
                          f"{cfg.workdir} is mirrored per machine. Train on one node, or mount the storage")
    ref = train_ref(cfg, round_)
    # Nodes of one multi-node run share the output directory: one lock per node, not per stage.
    with stage_lock(ref, f".node{cfg.train.node_rank}" if cfg.train.nnodes > 1 else ""):
        return _run(cfg, round_, force, ref)


def _run(cfg: PipelineConfig, round_: int, force: bool, ref: StageRef) -> Outcome:
    sc_ref = score_ref(cfg, round_)
    sc = require(sc_ref, "train")
    lead = cfg.train.node_rank == 0  # node 0 owns the shared directory's set-up and manifest
    cached = prepare(ref, force and lead)
    if cached is not None:
        return Outcome(ref, True, cached)
    timer = Timer()
    check_tensorboard(cfg.train)
    check_columns(cfg.train, [member(sc_ref.directory, s["name"]) for s in sc.shards])
    # A crashed earlier attempt leaves no manifest: its checkpoints are resumed from (the worker
    # does that), a half-written export is redone.
    if lead:
        shutil.rmtree(ref.directory / "model", ignore_errors=True)
    hashed_train = cfg.train.model_dump(exclude=set(TrainConfig.OPERATIONAL))
    spec = {
        "train": cfg.train.model_dump(),
        "model_dir": str(ensure_local(Path(ref.inputs["_model_dir"]))),
        "shards": [[str(member(sc_ref.directory, s["name"])), s["sha256"]] for s in sc.shards],
        "output_dir": str(ref.directory),
        # What a checkpoint must have been trained on to be resumed from.
        "spec_digest": digest({"train": hashed_train, "model": ref.inputs["model"],
                               "shards": [s["sha256"] for s in sc.shards]}),
    }
    suffix = f".node{cfg.train.node_rank}" if cfg.train.nnodes > 1 else ""
    spec_path = ref.directory / f"spec{suffix}.json"
    spec_path.write_text(json.dumps(spec, indent=2))
    cmd = torchrun_command(cfg.train, spec_path, ref.key[:16])
    log_path = ref.directory / f"train{suffix}.log"
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    with open(log_path, "w") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, check=False)
    if proc.returncode != 0 or not (ref.directory / "model" / "config.json").is_file():
        tail = "\n".join(log_path.read_text().splitlines()[-15:])
        raise StageFailed(f"train (round {round_}) failed with exit code {proc.returncode}; log: {log_path}\n{tail}")
    if not lead:  # node 0 writes the manifest once every node's learner has finished
        return Outcome(ref, False, None, timer.seconds, [f"node {cfg.train.node_rank}: learner done; node 0 writes the manifest"])
    shutil.rmtree(ref.directory / "cache", ignore_errors=True)  # derived copy of score's shards
    metrics = read_metrics(ref.directory)
    terms = sorted({k for m in metrics for k in m if k.startswith("loss")})
    stats = {
        "steps": len(metrics),
        "load": json.loads((ref.directory / "load_stats.json").read_text()),
        "groups_seen": sum(m["groups"] for m in metrics),
        "real_tokens": sum(m["real_tokens"] for m in metrics),
        "mean": {k: sum(m[k] for m in metrics) / max(len(metrics), 1) for k in terms},
        "final": {k: metrics[-1][k] for k in terms} if metrics else {},
        "seconds": round(timer.seconds, 3),
    }
    manifest = write_manifest(ref.directory, stage="train", key=ref.key, config=ref.config,
                              inputs={**ref.inputs, "round": round_},
                              shards=[{"name": "model", "rows": 0, "sha256": policy_digest(ref.directory / "model")}],
                              stats=stats)
    return Outcome(ref, False, manifest, timer.seconds)
