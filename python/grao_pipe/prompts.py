"""Prompt sets: one prompt per row with its reference answer, validated row by row.

Sources: JSONL (optionally gzipped) or Parquet with prompt/messages + reference columns, and
Anthropic HH-RLHF files as published (``chosen``/``rejected`` transcripts). Malformed rows of a
generic file are errors that name the row; HH rows that cannot form a (prompt, reference) pair
are quarantined with a reason and counted, never dropped silently.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from grao_pipe.config import DataConfig
from grao_pipe.errors import InputError
from grao_pipe.remote import local_input
from grao_pipe.store import content_sha256

BUILTIN_PREFIX = "builtin:"


@dataclass(frozen=True)
class Prompt:
    index: int
    text: str | None  # plain-text prompt
    messages: tuple[tuple[str, str], ...] | None  # chat form: (role, content) pairs
    reference: str
    rejected: str | None = None


@dataclass(frozen=True)
class PromptSet:
    prompts: list[Prompt]
    quarantined: list[dict[str, Any]] = field(default_factory=list)  # {"row", "reason"}


def resolve_prompt_path(spec: str) -> Path:
    if spec.startswith(BUILTIN_PREFIX):
        name = spec[len(BUILTIN_PREFIX) :]
        path = Path(str(resources.files("grao_pipe") / "data" / f"{name}.jsonl"))
        if not path.is_file():
            names = sorted(f"builtin:{p.stem}" for p in path.parent.glob("*.jsonl"))
            raise InputError(f"data.prompts: no bundled prompt set named {name!r} (available: {', '.join(names)})")
        return path
    path = local_input(spec)
    if not path.is_file():
        raise InputError(f"data.prompts: prompt file {path} does not exist")
    return path


def prompt_set_fingerprint(cfg: DataConfig) -> dict[str, object]:
    path = resolve_prompt_path(cfg.prompts)
    return {"sha256": content_sha256(path), **cfg.model_dump(exclude={"prompts"})}


def _rows(path: Path) -> Iterator[tuple[int, object]]:
    """(1-based row number, parsed row); a line that is not JSON is an error naming it."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        yield from enumerate(pq.read_table(path).to_pylist(), start=1)
        return
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{path.name}:{lineno}: not valid JSON ({e.msg}); fix or remove the row") from None


def _messages(value: object, where: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, list) or not value:
        raise InputError(f"{where}: 'messages' must be a non-empty list of {{role, content}}")
    out = []
    for m in value:
        if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
            raise InputError(f"{where}: each message needs string 'role' and 'content'")
        out.append((m["role"], m["content"]))
    return tuple(out)


def _generic(row: dict[str, Any], cfg: DataConfig, where: str, index: int) -> Prompt:
    ref = row.get(cfg.reference_field)
    if not isinstance(ref, str) or not ref.strip():
        raise InputError(f"{where}: missing or empty reference field {cfg.reference_field!r}")
    text = row.get(cfg.prompt_field)
    raw_messages = row.get(cfg.messages_field)
    messages = _messages(raw_messages, where) if raw_messages is not None else None
    if messages is None and (not isinstance(text, str) or not text.strip()):
        raise InputError(f"{where}: missing or empty prompt field {cfg.prompt_field!r} (or {cfg.messages_field!r})")
    rejected = row.get(cfg.rejected_field)
    return Prompt(index, text if isinstance(text, str) else None, messages, ref,
                  rejected if isinstance(rejected, str) else None)


_HH_TURN = re.compile(r"\n\n(Human|Assistant):[ ]?")


def parse_hh_transcript(text: str) -> list[tuple[str, str]]:
    """``\\n\\nHuman: ...\\n\\nAssistant: ...`` -> [("user", ...), ("assistant", ...)]."""
    parts = _HH_TURN.split(text)
    # parts = [preamble, role, content, role, content, ...]
    return [("user" if parts[i] == "Human" else "assistant", parts[i + 1].strip()) for i in range(1, len(parts) - 1, 2)]


def _hh(row: dict[str, Any], index: int) -> Prompt | str:
    """A Prompt, or the reason the row is quarantined."""
    chosen, rejected = row.get("chosen"), row.get("rejected")
    if not isinstance(chosen, str) or not isinstance(rejected, str):
        return "missing 'chosen' or 'rejected' transcript"
    c, r = parse_hh_transcript(chosen), parse_hh_transcript(rejected)
    if not c or c[-1][0] != "assistant" or not r or r[-1][0] != "assistant":
        return "no final assistant turn"
    if any(not content for _, content in c[:-1]) or not c[-1][1]:
        return "empty turn"
    if c[:-1] != r[:-1]:
        return "chosen and rejected dialogues differ before the last turn"
    return Prompt(index, None, tuple(c[:-1]), c[-1][1], r[-1][1] or None)


def load_prompt_set(cfg: DataConfig) -> PromptSet:
    path = resolve_prompt_path(cfg.prompts)
    prompts: list[Prompt] = []
    quarantined: list[dict[str, Any]] = []
    fmt = cfg.format
    for rowno, row in _rows(path):
        where = f"{path.name}:{rowno}"
        if not isinstance(row, dict):
            raise InputError(f"{where}: a row must be a JSON object")
        if fmt == "auto":
            fmt = "hh" if "chosen" in row and cfg.reference_field not in row else "generic"
        if fmt == "hh":
            parsed = _hh(row, len(prompts))
            if isinstance(parsed, str):
                quarantined.append({"row": rowno, "reason": parsed})
                continue
            prompts.append(parsed)
        else:
            prompts.append(_generic(row, cfg, where, len(prompts)))
        if cfg.limit is not None and len(prompts) >= cfg.limit:
            break
    if not prompts:
        extra = f" ({len(quarantined)} rows quarantined)" if quarantined else ""
        raise InputError(f"prompt set {path} has no usable rows{extra}; add prompts or point data.prompts elsewhere")
    return PromptSet(prompts, quarantined)


def load_prompts(cfg: DataConfig) -> list[Prompt]:
    return load_prompt_set(cfg).prompts


def group_id(prompt_text: str, reference: str) -> str:
    """Stable id of a group: hash of the rendered prompt and the reference."""
    return hashlib.blake2b(f"{prompt_text}\x00{reference}".encode(), digest_size=8).hexdigest()
