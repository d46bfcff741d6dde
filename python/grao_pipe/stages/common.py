"""Where each stage's output lives, and its cache key.

Cache key of a stage = hash(stage code version, the stage's own config section, the
fingerprints of its inputs, the model digest). The output directory is
``<workdir>/<stage>/<key[:16]>``: a changed key gives a new version beside the old one, never
a silent overwrite, and every stage downstream gets a new key too.
"""

from __future__ import annotations

import contextlib
import fcntl
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grao_pipe import remote, scoring
from grao_pipe.config import PipelineConfig, TrainConfig
from grao_pipe.errors import Locked, StageNotReady
from grao_pipe.models import policy_digest
from grao_pipe.prompts import load_prompts, prompt_set_fingerprint
from grao_pipe.remote import local_input, local_workdir
from grao_pipe.store import Manifest, clean_temporaries, digest, read_manifest

# Bump when a stage's output for the same inputs and config changes meaning.
CODE_VERSIONS = {"generate": 1, "score": 1, "train": 1}
STAGES = ("generate", "score", "train")
# Where and how fast a server is reached does not change what is sampled: not in the cache key.
OPERATIONAL_GENERATE_KEYS = {"base_url", "api_key_env", "concurrency", "timeout_s", "max_retries"}


@dataclass(frozen=True)
class StageRef:
    stage: str
    round: int
    key: str
    directory: Path
    config: dict[str, Any]
    inputs: dict[str, Any]

    @property
    def slot(self) -> str:
        return f"round-{self.round}/{self.stage}"

    def manifest(self) -> Manifest | None:
        return read_manifest(self.directory)


@dataclass
class Outcome:
    ref: StageRef
    cached: bool
    manifest: Manifest | None  # None: this worker's part is done, other parts are missing
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


def _make_ref(cfg: PipelineConfig, stage: str, round_: int, section: dict[str, Any], inputs: dict[str, Any]) -> StageRef:
    # Keys starting with "_" are informational (local paths) and do not enter the cache key.
    hashed = {k: v for k, v in inputs.items() if not k.startswith("_")}
    key = digest({"stage": stage, "code": CODE_VERSIONS[stage], "config": section, "inputs": hashed})
    return StageRef(stage, round_, key, local_workdir(cfg.workdir) / stage / key[:16], section, inputs)


def model_digest(model_dir: str) -> str:
    return policy_digest(model_dir)  # per-file hashes are memoised by (path, size, mtime)


def base_model_dir(cfg: PipelineConfig) -> Path:
    if cfg.model.path is not None:  # a directory, a .gguf file or a pkg: spec (GGUF imported once)
        from grao_pipe.models.resolve import PACKAGE_PREFIX, resolve_model_dir

        spec = cfg.model.path
        local = spec if spec.startswith(PACKAGE_PREFIX) else local_input(spec)
        return resolve_model_dir(local, local_workdir(cfg.workdir) / "models", cfg.model.gguf_dtype)
    from grao_pipe.models.tiny import build_tiny_model

    prompts = load_prompts(cfg.data)
    corpus = [t for p in prompts for t in (p.text or "", p.reference)]
    return build_tiny_model(cfg.model.tiny, corpus, local_workdir(cfg.workdir) / "models")


def model_for_round(cfg: PipelineConfig, round_: int) -> tuple[Path, str]:
    """The policy that samples round r, as (directory, digest): round 1 the configured model,
    round r round r-1's trained export, whose digest its train manifest records (so keys never
    re-hash the weights, nor download them from a remote workdir)."""
    if round_ == 1:
        model_dir = base_model_dir(cfg)
        return model_dir, model_digest(str(model_dir))
    prev = train_ref(cfg, round_ - 1)
    m = prev.manifest()
    if m is None:
        raise StageNotReady(f"round {round_} samples from round {round_ - 1}'s model; run train for round {round_ - 1} first")
    return prev.directory / "model", str(m.shards[0]["sha256"])


def require(ref: StageRef, consumer: str) -> Manifest:
    m = ref.manifest()
    if m is None:
        raise StageNotReady(
            f"{consumer} (round {ref.round}) reads the output of {ref.stage}, which has not finished "
            f"at {ref.directory}; run 'grao-pipe {ref.stage}' first"
        )
    return m


def generate_ref(cfg: PipelineConfig, round_: int) -> StageRef:
    model_dir, model = model_for_round(cfg, round_)
    inputs = {"prompts": prompt_set_fingerprint(cfg.data), "model": model, "_model_dir": str(model_dir)}
    section = {"generate": cfg.generate.model_dump(exclude=OPERATIONAL_GENERATE_KEYS),
               "trust_remote_code": cfg.model.trust_remote_code}
    return _make_ref(cfg, "generate", round_, section, inputs)


def reference_model_dir(cfg: PipelineConfig) -> Path:
    return local_input(cfg.score.reference_model) if cfg.score.reference_model else base_model_dir(cfg)


def score_ref(cfg: PipelineConfig, round_: int, generate: StageRef | None = None) -> StageRef:
    """``generate``: the round's generate ref when the caller has it (refs of round r depend on
    round r-1's, so recomputing it here would make the work grow as 2^rounds)."""
    gen = require(generate or generate_ref(cfg, round_), "score")
    inputs: dict[str, Any] = {"generate": gen.fingerprint}
    files = {s.name: f for s in cfg.score.scorers if (f := scoring.scorer_files(s))}
    if files:  # reward models, judge models and templates: by content, not by path
        inputs["scorer_files"] = files
    if cfg.score.reference_logprobs:
        ref_dir = reference_model_dir(cfg)
        inputs |= {"reference_model": model_digest(str(ref_dir)), "_reference_model_dir": str(ref_dir)}
    return _make_ref(cfg, "score", round_, cfg.score.model_dump(), inputs)


def train_ref(cfg: PipelineConfig, round_: int) -> StageRef:
    gen = generate_ref(cfg, round_)
    sc = require(score_ref(cfg, round_, gen), "train")
    inputs = {"score": sc.fingerprint, "model": gen.inputs["model"], "_model_dir": gen.inputs["_model_dir"]}
    # Launch-only keys (which node this is, logging) do not change what is trained.
    section = cfg.train.model_dump(exclude=set(TrainConfig.OPERATIONAL))
    return _make_ref(cfg, "train", round_, section, inputs)


WAIT_FOR_LOCKS = {"wait": False}  # set by the CLI's --wait


@contextlib.contextmanager
def stage_lock(ref: StageRef, suffix: str = "") -> Iterator[None]:
    """One writer per stage output: an exclusive flock on ``<stage>/<key>.lock``.

    A second concurrent run fails fast with Locked (exit code 75), or waits with ``wait``.
    The kernel drops the lock when its holder dies, so a crash never leaves it stuck.
    """
    ref.directory.parent.mkdir(parents=True, exist_ok=True)
    with open(ref.directory.parent / f"{ref.directory.name}{suffix}.lock", "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (0 if WAIT_FOR_LOCKS["wait"] else fcntl.LOCK_NB))
        except BlockingIOError:
            raise Locked(f"{ref.stage} (round {ref.round}) is being run by another process "
                         f"(lock {f.name}); retry later or pass --wait") from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def prepare(ref: StageRef, force: bool) -> Manifest | None:
    """Return the cached manifest, or make the directory ready for a (resumed) run."""
    if force:
        remote.delete_tree(ref.directory)  # first: a crash in between must not resurrect it
        shutil.rmtree(ref.directory, ignore_errors=True)
    m = ref.manifest()
    if m is not None:
        remote.pull_tree(ref.directory, finished_only=True)  # cached on a remote workdir: fetch it
        return m
    ref.directory.mkdir(parents=True, exist_ok=True)
    clean_temporaries(ref.directory)
    remote.clean_remote_temporaries(ref.directory)
    remote.pull_tree(ref.directory, finished_only=False)  # shards other runs committed: resume
    return None


class Timer:
    def __init__(self) -> None:
        self.t0 = time.perf_counter()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.t0
