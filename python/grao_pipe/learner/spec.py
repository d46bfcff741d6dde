"""What the train stage hands the learner: one JSON file per node, typed. No torch here (the
stage writes it in the CLI process)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict

from grao_pipe.config import TrainConfig


class LearnerSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    train: TrainConfig
    model_dir: Path  # the policy to start from (a local Hugging Face directory; LoRA: the base)
    adapter_dir: Path | None = None  # LoRA: the adapter to continue (the previous round's)
    shards: list[tuple[Path, str]]  # score shards and their sha256 (already checked by the stage)
    cache_dir: Path  # the stage's Arrow IPC copies of the shards' kept rows, memory-mapped
    output_dir: Path
    run_id: str  # names the W&B / MLflow run: a resumed stage continues it
    spec_digest: str  # what a checkpoint must have been trained on to be resumed from

    @classmethod
    def read(cls, path: Path) -> LearnerSpec:
        return cls.model_validate_json(path.read_text())

    def write(self, path: Path) -> None:
        path.write_text(self.model_dump_json(indent=2))

    @property
    def errors_dir(self) -> Path:
        """Where a failing rank writes its exception (the stage reports the root cause)."""
        return self.output_dir / "errors"
