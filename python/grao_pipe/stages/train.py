"""Stage 3: launch the FSDP2 learner under torchrun on score's shards; export the model."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow.compute as pc
import pyarrow.parquet as pq

from grao_pipe import progress
from grao_pipe.config import TrainConfig, keyed
from grao_pipe.errors import ConfigError, InputError, StageFailed
from grao_pipe.extras import require
from grao_pipe.faults import kill_point
from grao_pipe.hashing import digest
from grao_pipe.learner.spec import LearnerSpec
from grao_pipe.manifests import LoadStats, ShardEntry, TrainManifest, TrainStats
from grao_pipe.stages.base import Outcome, Part, Stage, Target, Timer

if TYPE_CHECKING:
    from grao_pipe.pipeline import Pipeline


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


def _die_with_parent() -> None:
    """In torchrun's process, before exec: it (and, through the worker's own signal, the
    learners) die when this grao-pipe process does."""
    from grao_pipe.learner.worker import die_with_parent

    die_with_parent()


def _root_cause(spec: LearnerSpec, log_path: Path) -> str:
    """The first failing rank's exception, else the log's last line (e.g. a rank killed by the OS)."""
    errors = sorted(spec.errors_dir.glob("rank-*.json"), key=lambda p: int(p.stem.split("-")[1]))
    if errors:
        e = json.loads(errors[0].read_text())
        return f"rank {e['rank']}: {e['type']}: {e['message']}"
    lines = [line for line in log_path.read_text(errors="replace").splitlines() if line.strip()] if log_path.is_file() else []
    return f"the learner exited without an error report ({lines[-1].strip() if lines else 'empty log'})"


def check_loggers(cfg: TrainConfig) -> None:
    """Each configured metric logger's package is installed (before torchrun starts)."""
    for backend in cfg.logging.backends:
        require(f"train.logging.backends=[{backend}]", backend)


class Train(Stage):
    name = "train"
    help = "Train the policy on score's shards (torchrun, FSDP2)."

    def target(self, p: Pipeline, round_: int) -> Target:
        sc = p.target("score", round_).require("train")
        inputs = {"score": sc.fingerprint, "model": p.policy(round_).digest}
        return self.make_target(p, round_, keyed(p.cfg.train), inputs)

    # Nodes of one multi-node run share the output directory: one lock per node, not per stage,
    # and only node 0 owns --force.
    def lock_suffix(self, p: Pipeline, part: Part) -> str:
        return f".node{p.cfg.train.node_rank}" if p.cfg.train.nnodes > 1 else ""

    def may_wipe(self, p: Pipeline, part: Part) -> bool:
        return p.cfg.train.node_rank == 0

    def run(self, p: Pipeline, round_: int = 1, force: bool = False, part: Part = (0, 1)) -> Outcome:
        if p.cfg.train.nnodes > 1 and p.workdir.mirror is not None:
            raise ConfigError("train.nnodes > 1 needs a workdir every node shares (a shared filesystem); "
                              f"{p.cfg.workdir} is mirrored per machine. Train on one node, or mount the storage")
        return super().run(p, round_, force, part)

    def execute(self, p: Pipeline, target: Target, part: Part) -> Outcome:
        cfg = p.cfg
        timer = Timer()
        lead = cfg.train.node_rank == 0  # node 0 owns the shared directory's set-up and manifest
        out = target.dir.path
        spec = self._preflight(p, target)
        # A finished export (model/ is renamed into place whole) needs no learner: a crash came
        # after it. Otherwise the learner resumes from its newest checkpoint and exports.
        if not (out / "model" / "config.json").is_file():
            self._launch(cfg.train, spec, target)
        if not lead:  # node 0 writes the manifest once every node's learner has finished
            return Outcome(target, False, None, timer.seconds, [f"node {cfg.train.node_rank}: learner done; node 0 writes the manifest"])
        kill_point("train.exported")
        metrics = read_metrics(out)
        terms = sorted({k for m in metrics for k in m if k.startswith("loss")})
        stats = TrainStats(
            steps=len(metrics),
            load=LoadStats.model_validate_json((out / "load_stats.json").read_text()),
            groups_seen=sum(m["groups"] for m in metrics),
            real_tokens=sum(m["real_tokens"] for m in metrics),
            mean={k: sum(m[k] for m in metrics) / max(len(metrics), 1) for k in terms},
            final={k: metrics[-1][k] for k in terms} if metrics else {},
            seconds=round(timer.seconds, 3),
        )
        from grao_pipe.models import policy_digest

        model = ShardEntry(name="model", rows=0, sha256=policy_digest(out / "model"))
        manifest = target.commit(TrainManifest, [model], stats)
        # Scratch of a finished stage: the learner's copy of the shards, its resume state.
        shutil.rmtree(out / "cache", ignore_errors=True)
        shutil.rmtree(out / "errors", ignore_errors=True)
        if not cfg.train.keep_checkpoints:
            shutil.rmtree(out / "checkpoints", ignore_errors=True)
        return Outcome(target, False, manifest, timer.seconds)

    def _preflight(self, p: Pipeline, target: Target) -> LearnerSpec:
        """Everything that can be checked before torchrun starts, as config/input/data errors
        (exit 2/3/5: a scheduler does not retry them), and the learner's spec."""
        cfg = p.cfg.train
        check_loggers(cfg)
        require("train (the FSDP2 learner)", "torch", "transformers")
        import torch

        from grao_pipe.learner.data import prepare_cache

        if cfg.attn_implementation == "flex_attention" and not torch.cuda.is_available():
            raise ConfigError("train.attn_implementation=flex_attention needs CUDA (torch has no flex-attention "
                              "backward on CPU); use train.attn_implementation=sdpa")
        sc_target = p.target("score", target.round)
        sc = sc_target.require("train")
        shards = [sc_target.dir.member(s.name) for s in sc.shards]
        check_columns(cfg, shards)
        out = target.dir.path
        groups = prepare_cache(list(zip(shards, (s.sha256 for s in sc.shards), strict=True)), out / "cache")
        world = cfg.nproc * cfg.nnodes
        if min(cfg.groups_per_step, groups) < world:
            raise ConfigError(f"train: the score output has {groups} groups with kept rows, which cannot feed "
                              f"{world} ranks (train.nproc x train.nnodes); lower train.nproc or score more prompts")
        policy = p.policy(target.round)
        return LearnerSpec(
            train=cfg, model_dir=policy.local_dir(), shards=list(zip(shards, (s.sha256 for s in sc.shards), strict=True)),
            cache_dir=out / "cache", output_dir=out, run_id=target.key[:16],
            spec_digest=digest({"train": keyed(cfg), "model": policy.digest, "shards": [s.sha256 for s in sc.shards]}))

    def _launch(self, cfg: TrainConfig, spec: LearnerSpec, target: Target) -> None:
        """torchrun, dying with this process; a failure is reported with the learner's own error."""
        out = target.dir.path
        suffix = f".node{cfg.node_rank}" if cfg.nnodes > 1 else ""
        spec_path = out / f"spec{suffix}.json"
        spec.write(spec_path)
        shutil.rmtree(spec.errors_dir, ignore_errors=True)
        log_path = out / f"train{suffix}.log"
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
               "HF_HUB_OFFLINE": "1", "GRAO_PIPE_PGID": str(os.getpgid(0)), "PYTHONUNBUFFERED": "1"}
        with open(log_path, "w") as log:
            proc = subprocess.Popen(torchrun_command(cfg, spec_path, target.key[:16]), stdout=log,
                                    stderr=subprocess.STDOUT, env=env, preexec_fn=_die_with_parent)
            try:  # the learner prints one progress line per step into the log: this stage's progress
                progress.follow(log_path, proc, progress.task("train", unit="steps"))
            except BaseException:  # Ctrl-C, SIGTERM: the learners stop with this process
                proc.kill()
                proc.wait()
                raise
        if proc.returncode != 0 or not (out / "model" / "config.json").is_file():
            raise StageFailed(f"train (round {target.round}) failed: {_root_cause(spec, log_path)}; "
                              f"full log: {log_path}")

    def size(self, m: object) -> str:
        assert isinstance(m, TrainManifest)
        return f"{m.stats.steps} steps"
