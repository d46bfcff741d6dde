"""What every scorer returns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class ScoreResult:
    values: list[float | None]  # R(o, y) per row; None = invalid (excluded from advantages)
    errors: int = 0  # rows whose scorer call failed
    unparseable: int = 0  # judge answers that matched no verdict


class Scorer(Protocol):
    name: str

    def score(self, prompts: list[str], responses: list[str], references: list[str]) -> ScoreResult: ...
