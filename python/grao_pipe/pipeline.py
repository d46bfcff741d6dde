"""One invocation's view of a config: its workdir, its inputs as local paths, the policy of each
round, and the target (key + directory) of every stage and round, each computed once.

``Pipeline(cfg)`` is built right after the config is loaded; stages receive it and never touch
paths or the object store themselves. The pipeline resolves each stage's declared upstream
(``Stage.upstream``, the stage graph): stages never ask for another stage by name. ``run`` runs
every stage of every round in graph order (skipping what is cached); ``status`` tells, without
writing anything or importing torch, what is done.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from grao_pipe import scoring
from grao_pipe.config import PipelineConfig, ScorerConfig
from grao_pipe.errors import DataError, GraoError, StageNotReady
from grao_pipe.models import Policy
from grao_pipe.prompts import PromptSet, load_prompt_set
from grao_pipe.stages import STAGES, plan, run_stages
from grao_pipe.stages.base import WHOLE, Edge, OnOutcome, Outcome, Part, Target, Upstream
from grao_pipe.storage import Workdir, local_input

__all__ = ["Pipeline", "Policy", "StageStatus"]


class Pipeline:
    def __init__(self, cfg: PipelineConfig, wait_for_locks: bool = False):
        self.cfg = cfg
        self.workdir = Workdir(cfg.workdir)
        self.wait_for_locks = wait_for_locks
        self._targets: dict[tuple[str, int], Target] = {}
        self._inputs: dict[str, Path] = {}
        self._policies: dict[int, Policy] = {}
        self._trained: dict[tuple[str, int], Policy] = {}

    # ---- inputs ----

    def input(self, location: str) -> Path:
        """A config location (path, ``builtin:``, URL) as a local path, resolved once."""
        if location not in self._inputs:
            self._inputs[location] = local_input(location)
        return self._inputs[location]

    @cached_property
    def prompt_set(self) -> PromptSet:
        return load_prompt_set(self.input(self.cfg.data.prompts), self.cfg.data)

    def policy(self, round_: int) -> Policy:
        """The policy that samples round r: round 1 the configured (or embedded) model, round r
        round r-1's trained export, whose digest its train manifest records (so keys never
        re-hash the weights, nor download them from a remote workdir)."""
        if round_ not in self._policies:
            self._policies[round_] = self.base_policy() if round_ == 1 else self.trained_policy(
                round_ - 1, f"generate (round {round_}, sampling from round {round_ - 1}'s model)")
        return self._policies[round_]

    def reference_policy(self) -> Policy:
        """The frozen reference model of DPO/GRPO/PPO (``score.reference_model``, default: the
        round-1 policy)."""
        if self.cfg.score.reference_model is None:
            return self.policy(1)
        return self.model_at(self.cfg.score.reference_model)

    def scorer_files(self, scorer: ScorerConfig) -> scoring.ScorerFiles:
        # Models through model_at, like the policy, reference and eval models: the same forms everywhere.
        return scoring.scorer_files(scorer, self.input, self.model_at)

    def model_at(self, location: str) -> Policy:
        """A model named in the config: a directory (path or URL), or a GGUF file (path, URL or
        ``pkg:MODULE/FILE``), imported on first load under the workdir's ``models/``."""
        from grao_pipe.models import (
            adapter_digest,
            is_adapter_dir,
            lora_policy_digest,
            policy_digest,
        )
        from grao_pipe.models.resolve import gguf_digest, gguf_file

        gguf = gguf_file(location, self.input)
        if gguf is not None:
            from grao_pipe.models.gguf import import_gguf

            dtype = self.cfg.model.gguf_dtype
            return Policy(gguf_digest(gguf, dtype), lambda: import_gguf(gguf, self.workdir.scratch("models"), dtype))
        model_dir = self.input(location)
        if is_adapter_dir(model_dir):  # a LoRA adapter (PEFT format): on the round-1 base
            base = self.policy(1)
            return Policy(lora_policy_digest(base.digest, adapter_digest(model_dir)), None, base=base,
                          get_adapter=lambda: model_dir)
        return Policy(policy_digest(model_dir), lambda: model_dir)

    def base_policy(self) -> Policy:
        """The configured (or embedded) model: what round 1 samples and starts training from."""
        if self.cfg.model.path is not None:
            return self.model_at(self.cfg.model.path)
        from grao_pipe.models.tiny import build_tiny_model, tiny_model_key

        # Everything the model will read: plain prompts, chat turns (and their roles), references.
        corpus = [t for p in self.prompt_set.prompts
                  for t in (p.text or "", *(f"{r}: {c}" for r, c in p.messages or ()), p.reference)]
        key = tiny_model_key(self.cfg.model.tiny, corpus)
        return Policy(f"tiny-{key}", lambda: build_tiny_model(self.cfg.model.tiny, corpus, self.workdir.scratch("models")))

    def trained_policy(self, trained_round: int, consumer: str, stage: str = "train") -> Policy:
        """Round ``trained_round``'s trained export, for ``consumer`` (named if it is missing)."""
        if (stage, trained_round) not in self._trained:
            train = self.target(stage, trained_round)
            m = train.require(consumer)
            entries = {s.name: s for s in m.shards}
            if "model" not in entries and "adapter" not in entries:
                raise DataError(f"{train.dir.display}: the {stage} manifest lists no model; re-run {stage} with --force")
            model = entries.get("model")
            merged = None
            if model is not None:
                merged = lambda: train.dir.verified_model(model, f"round {trained_round}")  # noqa: E731
            if "adapter" not in entries:
                assert model is not None
                policy = Policy(model.sha256, merged)
            else:  # LoRA: every round's adapter applies to the round-1 base (rounds continue one adapter)
                from grao_pipe.models import lora_policy_digest

                base = self.policy(1)
                policy = Policy(model.sha256 if model else lora_policy_digest(base.digest, entries["adapter"].sha256),
                                merged, base=base, get_adapter=lambda: train.dir.local_path("adapter"),
                                serve_adapter=self.cfg.train.export == "both")
            self._trained[(stage, trained_round)] = policy
        return self._trained[(stage, trained_round)]

    # ---- stages ----

    def target(self, stage: str, round_: int) -> Target:
        """Stage ``stage``'s output for round ``round_`` (memoised: targets of round r depend on
        round r-1's, so recomputing them would make the work grow with the rounds)."""
        if (stage, round_) not in self._targets:
            s = STAGES[stage]
            up = Upstream(stage, round_, s.upstream, lambda e: self._output(stage, round_, e),
                          lambda e: self._model(stage, round_, e))
            self._targets[(stage, round_)] = s.target(self, up)
        return self._targets[(stage, round_)]

    def _output(self, consumer: str, round_: int, edge: Edge) -> Target:
        if round_ + edge.offset < 1:
            raise KeyError(f"{consumer} (round {round_}) has no {edge.stage} output {-edge.offset} round(s) earlier")
        return self.target(edge.stage, round_ + edge.offset)

    def _model(self, consumer: str, round_: int, edge: Edge) -> Policy:
        r = round_ + edge.offset
        return self.policy(1) if r < 1 else self.trained_policy(r, f"{consumer} (round {round_})", edge.stage)

    def run_stage(self, stage: str, round_: int = 1, force: bool = False, part: Part = WHOLE) -> Outcome:
        return STAGES[stage].run(self, round_, force, part)

    def run(self, force: bool = False, on_outcome: OnOutcome | None = None) -> list[Outcome]:
        """Every stage of every round (``run.rounds``), skipping what is cached."""
        return run_stages(self, force, on_outcome)

    def status(self) -> list[StageStatus]:
        rows: list[StageStatus] = []
        for stage, round_ in plan(self.cfg, outside_rounds=True):
            try:
                rows.append(self._status(stage.name, round_))
            except GraoError as e:  # e.g. an eval.base_model that does not resolve: say so, list the rest
                rows.append(StageStatus(round_, stage.name, "unavailable", None, str(e)))
        return rows

    def _status(self, stage: str, round_: int) -> StageStatus:
        try:
            target = self.target(stage, round_)
            m = target.manifest()
        except DataError as e:  # one damaged output: shown as such, the others still listed
            return StageStatus(round_, stage, "corrupt", None, str(e))
        except StageNotReady:
            others = self._finished_versions(stage, round_, None)
            if others:
                return StageStatus(round_, stage, "stale", None, f"older version(s) {', '.join(others)}; inputs not ready")
            return StageStatus(round_, stage, "waiting", None, "its input stage has not finished")
        key = target.key[:16]
        if m is not None:
            return StageStatus(round_, stage, "done", key, f"{STAGES[stage].size(m)}, {m.created_at}")
        if target.dir.exists():
            return StageStatus(round_, stage, "partial", key, "started, not finished; the next run resumes it")
        others = self._finished_versions(stage, round_, target.key)
        if others:
            return StageStatus(round_, stage, "stale", key, f"config or inputs changed; old version(s): {', '.join(others)}")
        return StageStatus(round_, stage, "missing", key, "not run yet")

    def _finished_versions(self, stage: str, round_: int, key: str | None) -> list[str]:
        """Finished versions of the same (round, stage) under another key: the stale ones."""
        found = []
        for d in self.workdir.versions(stage):
            try:
                m = d.manifest()
            except DataError:
                continue
            if m is not None and m.inputs.round == round_ and m.key != key:
                found.append(d.name)
        return found


@dataclass(frozen=True)
class StageStatus:
    round: int
    stage: str
    state: str  # done | partial | stale | missing | waiting
    key: str | None
    detail: str
