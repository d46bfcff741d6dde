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
from grao_pipe.config import TrainConfig
from grao_pipe.errors import FULL_ERRNOS, ConfigError, InputError, StageFailed, StorageFull
from grao_pipe.extras import require
from grao_pipe.faults import kill_point
from grao_pipe.hashing import digest
from grao_pipe.learner.records import RankError, read_metrics
from grao_pipe.learner.spec import LearnerSpec

# In torchrun's process, before exec: it (and, through the worker's own signal, the learners)
# die when this grao-pipe process does. Imported here, not in the forked child: a child that
# imports code can find it changed on disk since this process started (an upgrade mid-run).
from grao_pipe.learner.worker import die_with_parent
from grao_pipe.manifests import LoadStats, ShardEntry, TrainManifest, TrainStats
from grao_pipe.sections import keyed
from grao_pipe.stages.base import Edge, Outcome, Part, Stage, Target, Timer, Upstream

if TYPE_CHECKING:
    from grao_pipe.pipeline import Pipeline


def check_columns(cfg: TrainConfig, shards: list[Path]) -> None:
    """Fail before training starts if a kept row lacks a column the objective needs."""
    need = cfg.configured.needs.columns
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



def _root_cause(spec: LearnerSpec, log_path: Path) -> str:
    """The first failing rank's exception, else the log's last line (e.g. a rank killed by the OS)."""
    errors = sorted(spec.errors_dir.glob("rank-*.json"), key=lambda p: int(p.stem.split("-")[1]))
    for report in filter(None, map(RankError.read, errors)):  # a report cut short is skipped, not parsed
        if report.errno in FULL_ERRNOS:  # the disk filled under the learner: 74, not "retry"
            raise StorageFull(f"train: the learner could not write ({report.describe()}); free space and re-run "
                              "train, which resumes from its last checkpoint")
        return report.describe()
    lines = [line for line in log_path.read_text(errors="replace").splitlines() if line.strip()] if log_path.is_file() else []
    return f"the learner exited without an error report ({lines[-1].strip() if lines else 'empty log'})"


def _vocab_size(model_dir: Path) -> int | None:
    try:
        v = json.loads((model_dir / "config.json").read_text()).get("vocab_size")
    except (OSError, ValueError, AttributeError):
        return None  # the learner's model load names what is wrong with the directory
    return v if isinstance(v, int) and v > 0 else None


def exported(out: Path, cfg: TrainConfig) -> bool:
    """Whether the learner's export for ``cfg`` is complete under ``out`` (each directory is
    renamed into place whole; a LoRA learner writes adapter/ before model/)."""
    from grao_pipe.models import ADAPTER_DIR, is_adapter_dir

    model = (out / "model" / "config.json").is_file()
    if cfg.lora is None:
        return model
    return is_adapter_dir(out / ADAPTER_DIR) and (model or cfg.export == "adapter")


def check_loggers(cfg: TrainConfig) -> None:
    """Each configured metric logger's package is installed (before torchrun starts)."""
    for backend in cfg.logging.backends:
        require(f"train.logging.backends=[{backend}]", backend)


class Train(Stage):
    name = "train"
    help = "Train the policy on score's shards (torchrun, FSDP2)."

    # The round's scored rollouts; the model it starts from: round r-1's, the base model in round 1.
    upstream = (Edge("score"), Edge("train", -1, model=True))

    def target(self, p: Pipeline, up: Upstream) -> Target:
        sc = up.output("score").require("train")
        inputs = {"score": sc.fingerprint, "model": up.model("train", -1).digest}
        return self.make_target(p, up, keyed(p.cfg.train), inputs)

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
        if not exported(out, cfg.train):
            self._launch(cfg.train, spec, target)
        if not lead:  # node 0 writes the manifest once every node's learner has finished
            return Outcome(target, False, None, timer.seconds, [f"node {cfg.train.node_rank}: learner done; node 0 writes the manifest"])
        kill_point("train.exported")
        metrics = read_metrics(out / "metrics.jsonl")
        terms = [m.terms for m in metrics]
        names = sorted({k for t in terms for k in t})
        stats = TrainStats(
            steps=len(metrics),
            load=LoadStats.model_validate_json((out / "load_stats.json").read_text()),
            groups_seen=sum(m.groups for m in metrics),
            real_tokens=sum(m.real_tokens for m in metrics),
            mean={k: sum(t[k] for t in terms) / max(len(terms), 1) for k in names},
            final=terms[-1] if terms else {},
            seconds=round(timer.seconds, 3),
        )
        from grao_pipe.models import ADAPTER_DIR, adapter_digest, policy_digest

        # The exports, by content digest: model/ (full or merged), adapter/ (LoRA).
        models = [ShardEntry(name="model", rows=0, sha256=policy_digest(out / "model"))
                  ] if (out / "model").is_dir() else []
        if cfg.train.lora is not None:
            models.append(ShardEntry(name=ADAPTER_DIR, rows=0, sha256=adapter_digest(out / ADAPTER_DIR)))
        manifest = target.commit(TrainManifest, models, stats)
        # Scratch of a finished stage: the learner's copy of the shards, its resume state.
        shutil.rmtree(out / "cache", ignore_errors=True)
        shutil.rmtree(out / "errors", ignore_errors=True)
        for tmp in out.glob("tmp*"):
            shutil.rmtree(tmp, ignore_errors=True)
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
        sc_target = target.upstream.output("score")
        sc = sc_target.require("train")
        shards = [sc_target.dir.member(s.name) for s in sc.shards]
        check_columns(cfg, shards)
        out = target.dir.path
        policy = target.upstream.model("train", -1)
        # LoRA: the round-1 base, and the adapter to continue (the previous round's).
        model_dir = policy.local_dir() if cfg.lora is None else (policy.base or policy).local_dir()
        adapter_dir = policy.get_adapter() if cfg.lora is not None and policy.get_adapter is not None else None
        groups = prepare_cache(list(zip(shards, (s.sha256 for s in sc.shards), strict=True)), out / "cache",
                               vocab_size=_vocab_size(model_dir))
        world = cfg.nproc * cfg.nnodes
        if min(cfg.groups_per_step, groups) < world:
            raise ConfigError(f"train: the score output has {groups} groups with kept rows, which cannot feed "
                              f"{world} ranks (train.nproc x train.nnodes); lower train.nproc or score more prompts")
        return LearnerSpec(
            train=cfg, model_dir=model_dir, adapter_dir=adapter_dir, shards=list(zip(shards, (s.sha256 for s in sc.shards), strict=True)),
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
        # torchrun's per-run log directories (torchelastic_*) and the workers' temporaries go
        # under the stage directory, removed with its other scratch, not left in the system's.
        tmp = out / f"tmp{suffix}"
        tmp.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
               "HF_HUB_OFFLINE": "1", "GRAO_PIPE_PGID": str(os.getpgid(0)), "TMPDIR": str(tmp),
               "PYTHONUNBUFFERED": "1"}
        with open(log_path, "w") as log:
            proc = subprocess.Popen(torchrun_command(cfg, spec_path, target.key[:16]), stdout=log,
                                    stderr=subprocess.STDOUT, env=env, preexec_fn=die_with_parent)
            try:  # the learner prints one progress line per step into the log: this stage's progress
                progress.follow(log_path, proc, progress.task("train", unit="steps"))
            except BaseException:  # Ctrl-C, SIGTERM: the learners stop with this process
                proc.kill()
                proc.wait()
                raise
        if proc.returncode != 0 or not exported(out, cfg):
            raise StageFailed(f"train (round {target.round}) failed: {_root_cause(spec, log_path)}; "
                              f"full log: {log_path}")

    def size(self, m: object) -> str:
        assert isinstance(m, TrainManifest)
        lora = m.config.get("lora")
        if not lora:
            return f"{m.stats.steps} steps"
        exports = "+".join(s.name for s in m.shards)
        return f"{m.stats.steps} steps, LoRA r={lora['r']} ({exports})"
