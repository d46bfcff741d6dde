"""What a stage is: a name, the stages it reads (``upstream``: the stage graph), a cache key
computed from its inputs, and one ``run`` shape.

Every stage (generate, score, train, eval) is a ``Stage`` in the registry of
``grao_pipe.stages``; the CLI, ``run``, ``status`` and ``datasets`` iterate that registry. A
``Target`` is one stage's output for one round: its cache key, its ``StageDir``, and its
resolved upstream. Stages never ask for another stage's output by name at run time: they
declare ``Edge``s, and the pipeline resolves them (``Upstream``).

Cache key of a stage = hash(stage name, code version, its config section without ``Unkeyed``
fields, the fingerprints of its inputs). The output directory is ``<workdir>/<stage>/<key[:16]>``:
a changed key gives a new version beside the old one, never a silent overwrite, and every stage
downstream gets a new key too.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from rich.console import Console

from grao_pipe import progress
from grao_pipe.errors import DataError, StageNotReady
from grao_pipe.hashing import digest
from grao_pipe.manifests import Manifest, StageManifest
from grao_pipe.schemas import MANIFEST_NAME
from grao_pipe.storage import StageDir

if TYPE_CHECKING:
    from grao_pipe.models import Policy
    from grao_pipe.pipeline import Pipeline

Part = tuple[int, int]  # (k, N): worker k of N (``--shard k/N``)
WHOLE: Part = (0, 1)


M = TypeVar("M", bound=StageManifest)
M2 = TypeVar("M2", bound=Manifest | None)


@dataclass(frozen=True)
class Edge:
    """An edge of the stage graph: a stage reads ``stage``'s output of the round ``offset``
    away (0: the same round, -1: the previous one), either its shards (``model=False``) or the
    model it trained (``model=True``). A model edge before round 1 reads the base model (the
    configured ``model.path`` or the embedded one); an output edge before round 1 is absent."""

    stage: str
    offset: int = 0
    model: bool = False


class Upstream:
    """One target's edges, resolved by the pipeline on first use (an eval of an explicitly named
    model never needs the train stage's output) and only along declared edges."""

    def __init__(self, consumer: str, round_: int, edges: tuple[Edge, ...],
                 output: Callable[[Edge], Target], model: Callable[[Edge], Policy]):
        self.consumer, self.round, self.edges = consumer, round_, edges
        self._output, self._model = output, model
        self._outputs: dict[Edge, Target] = {}
        self._models: dict[Edge, Policy] = {}

    def _edge(self, stage: str, offset: int, model: bool) -> Edge:
        edge = Edge(stage, offset, model)
        if edge not in self.edges:
            raise KeyError(f"{self.consumer} declares no edge {edge} (its upstream: {self.edges})")
        return edge

    def output(self, stage: str, offset: int = 0) -> Target:
        """The upstream stage's output (its target; ``.require(...)`` for its manifest)."""
        edge = self._edge(stage, offset, False)
        if edge not in self._outputs:
            self._outputs[edge] = self._output(edge)
        return self._outputs[edge]

    def model(self, stage: str, offset: int = 0) -> Policy:
        """The model the upstream stage trained (or the base model before round 1)."""
        edge = self._edge(stage, offset, True)
        if edge not in self._models:
            self._models[edge] = self._model(edge)
        return self._models[edge]


@dataclass(frozen=True)
class Target:
    """One stage's output for one round: what its key hashes and where it lives."""

    stage: str
    round: int
    key: str
    dir: StageDir
    config: dict[str, Any]  # the stage's config section, as hashed
    inputs: dict[str, Any]  # fingerprints of what it reads, as hashed
    upstream: Upstream = field(compare=False, repr=False)

    @property
    def label(self) -> str:
        return f"{self.stage} round {self.round} ({self.key[:16]})"

    def manifest(self) -> Manifest | None:
        return self.check(self.dir.manifest())

    def check(self, m: M2) -> M2:
        """``m``, if it is this output's: the stage and key it records match this directory,
        and it lists every shard file there. A manifest edited or copied in is refused."""
        if m is None:
            return m
        where = self.dir.workdir.display(self.dir.path / MANIFEST_NAME)
        if m.stage != self.stage:
            raise DataError(f"{where}: says stage {m.stage!r}, but the directory holds {self.stage} output; "
                            f"re-run {self.stage} with --force, or delete the directory")
        if m.key != self.key:
            raise DataError(f"{where}: says key {m.key[:12]}, but this directory is key {self.key[:12]} (copied "
                            f"from another version?); re-run {self.stage} with --force, or delete the directory")
        self.dir.check_listing(m)
        return m

    def commit(self, cls: type[M], shards: list[Any], stats: Any, sources: dict[str, Any] | None = None) -> M:
        """Commit this output: its manifest (key, config and inputs as hashed, the round; the
        unhashed ``sources`` for lineage) with ``shards`` and ``stats``, and ``_SUCCESS``;
        returns the committed manifest."""
        m = cls(key=self.key, config=self.config, inputs={**self.inputs, "round": self.round}, shards=shards,
                stats=stats, sources=sources or {})
        self.dir.commit(m)
        return m

    def require(self, consumer: str) -> Manifest:
        """This output's manifest, or StageNotReady saying what to run first."""
        m = self.manifest()
        if m is None:
            raise StageNotReady(f"{consumer} (round {self.round}) reads the output of {self.stage}, which has "
                                f"not finished at {self.dir.display}; run 'grao-pipe {self.stage}"
                                f"{'' if self.round == 1 else f' --round {self.round}'}' first")
        return m


@dataclass
class Outcome:
    target: Target
    cached: bool
    manifest: Manifest | None  # None: this worker's part is done, other parts are missing
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


class Stage(ABC):
    """A cached, resumable pipeline stage."""

    name: ClassVar[str]
    help: ClassVar[str]
    # Bump when the stage's output for the same inputs and config changes meaning.
    code_version: ClassVar[int] = 1
    dataset: ClassVar[bool] = False  # a rollout dataset other teams read (list, verify, export)
    shardable: ClassVar[bool] = False  # --shard k/N splits it over machines with no coordinator
    in_run: ClassVar[bool] = True  # part of every round of ``grao-pipe run``
    upstream: ClassVar[tuple[Edge, ...]] = ()  # what it reads: its edges in the stage graph

    def key(self, section: dict[str, Any], inputs: dict[str, Any]) -> str:
        return digest({"stage": self.name, "code": self.code_version, "config": section, "inputs": inputs})

    def make_target(self, p: Pipeline, up: Upstream, section: dict[str, Any], inputs: dict[str, Any]) -> Target:
        key = self.key(section, inputs)
        return Target(self.name, up.round, key, p.workdir.stage_dir(self.name, key), section, inputs, up)

    @abstractmethod
    def target(self, p: Pipeline, up: Upstream) -> Target:
        """The key and directory of round ``up.round``'s output, from its resolved upstream.
        Computing it never builds or downloads a model: it reads upstream manifests and hashes
        inputs."""

    @abstractmethod
    def execute(self, p: Pipeline, target: Target, part: Part) -> Outcome:
        """Produce the output into a prepared (empty or resumable) directory, under the lock."""

    def lock_suffix(self, p: Pipeline, part: Part) -> str:
        return f".part-{part[0]}-of-{part[1]}" if part[1] > 1 else ""

    def may_wipe(self, p: Pipeline, part: Part) -> bool:
        """Whether this invocation owns ``--force`` (one of several workers must not wipe the others)."""
        return part[0] == 0

    def run(self, p: Pipeline, round_: int = 1, force: bool = False, part: Part = WHOLE) -> Outcome:
        target = p.target(self.name, round_)
        with target.dir.lock(f"{self.name} (round {round_})", self.lock_suffix(p, part), wait=p.wait_for_locks):
            if force and self.may_wipe(p, part):
                self.forget(p, target)
            cached = target.check(target.dir.prepare(force and self.may_wipe(p, part)))
            if cached is not None:
                return Outcome(target, True, cached)
            try:
                with progress.board(self.name):  # a bar on a terminal, a line every N seconds elsewhere
                    return self.execute(p, target, part)
            except BaseException:
                target.dir.remove_if_empty()  # a run that failed before writing anything leaves no trace
                raise

    def forget(self, p: Pipeline, target: Target) -> None:
        """With ``--force``: drop derived caches besides the output (score: raw rewards)."""
        return None

    def summary(self, o: Outcome) -> list[str]:
        """Lines the CLI prints after the stage ran (besides done/cached)."""
        return []

    def size(self, m: Manifest) -> str:
        return f"{m.rows} rows"

    def report(self, o: Outcome, console: Console) -> None:
        """What the CLI prints for this stage's outcome."""
        if o.manifest is None:
            console.print(f"{o.target.label}: {'; '.join(o.notes)}", markup=False)
            return
        state = "cached, nothing to do" if o.cached else f"done in {o.seconds:.1f}s"
        console.print(f"{o.target.label}: {state} ({self.size(o.manifest)} at {o.target.dir.display})", markup=False)
        if not o.cached:
            for line in self.summary(o):
                console.print(f"  {line}", markup=False)


class Timer:
    def __init__(self) -> None:
        self.t0 = time.perf_counter()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.t0


OnOutcome = Callable[[Outcome], None]
