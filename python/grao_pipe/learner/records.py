"""What the learner writes for the train stage to read, typed on both sides (no torch here):
one ``StepMetrics`` line per optimizer step in ``metrics.jsonl``, and a failing rank's
``RankError`` in ``errors/rank-<r>.json``."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError


class StepMetrics(BaseModel):
    """One optimizer step, as rank 0 logs it. Besides these fields a line holds the objective's
    loss terms (``loss_<term>``, they sum to ``loss``) and its diagnostics (e.g. ``staleness_kl``)."""

    model_config = ConfigDict(frozen=True, extra="allow")

    step: int
    epoch: int
    loss: float
    grad_norm: float
    lr: float
    groups: int
    real_tokens: int
    padding_fraction: float
    tokens_per_s: float
    data_wait_fraction: float  # rank 0's time waiting for its batches
    mfu: float | None = None  # on GPUs of a known peak only

    @property
    def terms(self) -> dict[str, float]:
        """The loss and each of its terms: ``loss`` and ``loss_<term>``."""
        extra = self.model_extra or {}
        return {"loss": self.loss, **{k: float(v) for k, v in extra.items() if k.startswith("loss_")}}

    def flat(self) -> dict[str, float | int | None]:
        return self.model_dump()


def read_metrics(path: Path) -> list[StepMetrics]:
    """``metrics.jsonl``'s steps (none if it does not exist)."""
    if not path.is_file():
        return []
    return [StepMetrics.model_validate_json(line) for line in path.read_text().splitlines() if line.strip()]


class RankError(BaseModel):
    """The exception that ended one learner process."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    rank: int
    type: str
    message: str
    errno: int | None = None  # of an OSError: a full disk is reported as such (exit 74)
    traceback: str = ""

    def write(self, errors_dir: Path) -> None:
        errors_dir.mkdir(parents=True, exist_ok=True)
        (errors_dir / f"rank-{self.rank}.json").write_text(self.model_dump_json())

    @classmethod
    def read(cls, path: Path) -> RankError | None:
        """The report, or None when it is unreadable (a rank killed while writing it, a full disk)."""
        try:
            return cls.model_validate_json(path.read_bytes())
        except (OSError, ValidationError, json.JSONDecodeError):
            return None

    def describe(self) -> str:
        return f"rank {self.rank}: {self.type}: {self.message}"
