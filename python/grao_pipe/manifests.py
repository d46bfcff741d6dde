"""The manifest of a stage output: typed, beside the Arrow schemas of ``grao_pipe.schemas``.

A manifest is written last into a stage directory (``_manifest.json``): the resolved config
section, the input fingerprints, the code version, per-shard checksums and row counts, and the
stage's statistics, typed per stage so that nothing downstream reads them by string keys.
Manifests come from other teams too: they are data, validated on read.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_serializer,
    model_validator,
)

from grao_pipe import __version__
from grao_pipe.errors import DataError
from grao_pipe.hashing import digest
from grao_pipe.schemas import SCHEMA_VERSION


class _Model(BaseModel):
    # Unknown fields are ignored, so a manifest written by a newer release stays readable.
    model_config = ConfigDict(frozen=True, extra="ignore")


class GenerateShardStats(_Model):
    groups: int = 0
    response_tokens: int = 0
    max_response_tokens: int = 0
    truncated_responses: int = 0
    prompts_skipped_overlong: int = 0
    prompts_truncated: int = 0


class ScoreShardStats(_Model):
    rows: int = 0
    groups: int = 0
    degenerate_groups: int = 0
    single_sample_groups: int = 0
    invalid_rewards: int = 0
    reward_sum: float = 0.0
    reward_count: int = 0
    kept_rows: int = 0
    scorer_errors: int = 0
    unparseable: int = 0


class ShardEntry(_Model):
    name: str = Field(min_length=1)
    rows: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{32,64}$")
    stats: dict[str, Any] | None = None


class GenerateStats(GenerateShardStats):
    prompts: int = 0
    quarantined_rows: int = 0
    samples: int = 0
    mean_response_tokens: float = 0.0
    seconds: float = 0.0
    # generate.backend=import: formats, files' sha256, model names seen, quarantine and
    # log-prob counts (docs/import.md); None for sampled outputs.
    imported: dict[str, Any] | None = None


class ScoreStats(ScoreShardStats):
    mean_reward: float = 0.0
    degenerate_share: float = 0.0
    invalid_share: float = 0.0
    scorer_shards_computed: dict[str, int] = Field(default_factory=dict)
    seconds: float = 0.0


class LoadStats(_Model):
    rows: int = 0
    truncated: int = 0
    skipped: int = 0


class TrainStats(_Model):
    steps: int = 0
    load: LoadStats = LoadStats()
    groups_seen: int = 0
    real_tokens: int = 0
    mean: dict[str, float] = Field(default_factory=dict)  # mean per step of loss and each term
    final: dict[str, float] = Field(default_factory=dict)
    seconds: float = 0.0


class Estimate(_Model):
    """A metric with its 95% interval and N (``grao_pipe.metrics``)."""

    value: float
    low: float
    high: float
    n: int


class EvalStats(_Model):
    """``grao-pipe eval``'s result (docs/objectives.md, Evaluation): RAS and NAG with N and 95% intervals."""

    n_prompts: int
    scorer: str
    held_out: bool | None = None  # False: eval.prompts was not set, the training prompts were used
    invalid: dict[str, int]
    mean_reward: dict[str, float | None]
    ras: dict[str, Estimate]  # strict, win_tie
    ras_base: dict[str, Estimate]
    nag: dict[str, Estimate]  # printed, net
    seconds: float = 0.0


class PromptsInput(BaseModel):
    """The prompt set a stage read: its file's sha256 and the data settings that select rows."""

    model_config = ConfigDict(frozen=True, extra="allow")

    sha256: str


class Inputs(BaseModel):
    """What a stage read, as its cache key hashed it (every field is kept, typed or not), and
    the round it belongs to. Typed where readers use them."""

    model_config = ConfigDict(frozen=True, extra="allow")

    round: int | None = None
    model: str | None = None  # digest of the policy it sampled with, started from, or evaluated
    prompts: PromptsInput | None = None  # generate, eval
    generate: str | None = None  # generate's fingerprint (score)
    score: str | None = None  # score's fingerprint (train)
    lora_base: str | None = None  # a LoRA round's base model digest (generate)


class _Manifest(_Model):
    schema_version: int = SCHEMA_VERSION
    key: str
    code_version: str = __version__
    created_at: str = Field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    # The stage's config section exactly as its key hashed it (its shape is the section's,
    # typed where it is loaded: ``grao_pipe.config``).
    config: dict[str, Any]
    inputs: Inputs

    @field_serializer("inputs")
    def _inputs_as_read(self, inputs: Inputs) -> dict[str, Any]:
        return inputs.model_dump(mode="json", exclude_unset=True)  # no typed field a stage never set
    # Where the inputs came from, as configured (prompt file, model and scorer locations): for
    # lineage only, not hashed (keys follow the contents, so a moved file keeps its caches).
    sources: dict[str, Any] = Field(default_factory=dict)
    rows: int = 0
    shards: list[ShardEntry]

    @model_validator(mode="before")
    @classmethod
    def _count_rows(cls, data: Any) -> Any:
        if isinstance(data, dict) and "rows" not in data and isinstance(data.get("shards"), list):
            rows = [s.rows if isinstance(s, ShardEntry) else s.get("rows", 0) if isinstance(s, dict) else 0
                    for s in data["shards"]]
            data = {**data, "rows": sum(r for r in rows if isinstance(r, int))}
        return data

    @model_validator(mode="after")
    def _rows_add_up(self) -> _Manifest:
        names = [s.name for s in self.shards]
        if twice := sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"shard {twice[0]} listed twice (its rows would be read twice)")
        if self.rows != sum(s.rows for s in self.shards):
            raise ValueError(f"rows is {self.rows} but the shards hold {sum(s.rows for s in self.shards)}")
        return self

    @property
    def fingerprint(self) -> str:
        """What downstream cache keys hash: the stage, its key and its shards' checksums."""
        stage: str = getattr(self, "stage")  # noqa: B009 - every subclass declares it
        return digest({"stage": stage, "key": self.key,
                       "shards": [s.model_dump(mode="json", exclude_none=True) for s in self.shards]})

    def to_json(self) -> bytes:
        return self.model_dump_json(indent=2).encode()


class GenerateManifest(_Manifest):
    stage: Literal["generate"] = "generate"
    stats: GenerateStats


class ScoreManifest(_Manifest):
    stage: Literal["score"] = "score"
    stats: ScoreStats


class TrainManifest(_Manifest):
    stage: Literal["train"] = "train"
    stats: TrainStats


class EvalManifest(_Manifest):
    stage: Literal["eval"] = "eval"
    stats: EvalStats


# Any one stage's manifest type (``Manifest`` is the tagged union read from disk).
StageManifest = GenerateManifest | ScoreManifest | TrainManifest | EvalManifest
Manifest = Annotated[GenerateManifest | ScoreManifest | TrainManifest | EvalManifest, Field(discriminator="stage")]
_ADAPTER: TypeAdapter[Manifest] = TypeAdapter(Manifest)


def parse_manifest(raw: bytes, where: str) -> Manifest:
    """Validate a manifest's JSON; every problem names the key and says what to do."""
    try:
        return _ADAPTER.validate_json(raw)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc'][1:]) or 'manifest'}: {err['msg']}"
                             for err in e.errors()[:5])
        raise DataError(f"{where}: malformed manifest ({problems}); re-run the stage with --force, "
                        "or delete the directory") from None
