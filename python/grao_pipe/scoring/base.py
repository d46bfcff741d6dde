"""What every scorer takes and returns: a shard's columns in, one R(o, y) per row out."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import pyarrow as pa

F = TypeVar("F", bound=Callable[..., Any])


def batched(fn: F) -> F:
    """Mark a function scorer as vectorised: it is called once per shard with whole columns
    (``prompts, responses, references`` as ``pyarrow.Array`` of strings) and returns one value
    per row (any sequence or array convertible to float64; null/None/NaN = invalid row). An
    unmarked function is called row by row with Python strings."""
    fn.grao_batched = True  # type: ignore[attr-defined]
    return fn


@dataclass(frozen=True)
class ScoreInput:
    """The rows to score, as Arrow columns (zero-copy views of a generate shard)."""

    prompt: pa.Array  # the prompt as the policy saw it (its chat template applied)
    messages: pa.Array  # list<struct<role, content>>: the dialogue; null for plain-text prompts
    response: pa.Array
    reference: pa.Array

    @classmethod
    def of(cls, table: pa.Table) -> ScoreInput:
        def col(name: str) -> pa.Array:
            return table[name].combine_chunks()

        return cls(col("prompt"), col("prompt_messages"), col("response"), col("reference"))

    @classmethod
    def from_lists(cls, prompts: list[str], responses: list[str], references: list[str],
                   messages: list[list[dict[str, str]] | None] | None = None) -> ScoreInput:
        from grao_pipe.schemas import MESSAGE

        return cls(pa.array(prompts, pa.string()),
                   pa.array(messages if messages is not None else [None] * len(prompts), pa.list_(MESSAGE)),
                   pa.array(responses, pa.string()), pa.array(references, pa.string()))

    def __len__(self) -> int:
        return len(self.prompt)

    def dialogues(self) -> list[list[tuple[str, str]]]:
        """Each row's dialogue as (role, content) turns: the chat messages, or the plain prompt
        as one user turn. Never another model's chat template."""
        out = []
        for text, msgs in zip(self.prompt.to_pylist(), self.messages.to_pylist(), strict=True):
            out.append([(m["role"], m["content"]) for m in msgs] if msgs else [("user", text)])
        return out


@dataclass(frozen=True)
class ScoreResult:
    values: pa.Array  # float64 R(o, y) per row; null = invalid (excluded from advantages)
    errors: int = 0  # rows whose scorer call failed
    unparseable: int = 0  # judge answers that matched no verdict
    # Per-row detail columns kept beside the reward (a judge's raw answers and parsed verdicts:
    # grao_pipe.schemas.JUDGE_DETAIL_FIELDS), or None.
    details: pa.Table | None = None

    def tolist(self) -> list[float | None]:
        return self.values.to_pylist()


class Scorer(Protocol):
    name: str

    def score(self, rows: ScoreInput) -> ScoreResult: ...
