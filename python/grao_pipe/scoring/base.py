"""What every scorer returns."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class ScoreResult:
    values: list[float | None]  # R(o, y) per row; None = invalid (excluded from advantages)
    errors: int = 0  # rows whose scorer call failed
    unparseable: int = 0  # judge answers that matched no verdict


# A prompt's dialogue as stored (``prompt_messages``: [{"role", "content"}, ...]) or as loaded
# ((role, content) pairs); None for a plain-text prompt.
Messages = Sequence[Mapping[str, str]] | Sequence[tuple[str, str]] | None


class Scorer(Protocol):
    name: str

    def score(self, prompts: list[str], responses: list[str], references: list[str],
              messages: Sequence[Messages] | None = None) -> ScoreResult:
        """``prompts``: the prompts as the policy saw them (rendered with its chat template);
        ``messages``: the same prompts' dialogues, for scorers that must not read another
        model's template (judges, reward models)."""
        ...
