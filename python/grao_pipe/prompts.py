"""Prompt sets: one prompt per row with its reference answer, validated row by row.

Sources: JSONL (optionally gzipped) or Parquet with prompt/messages + reference columns, and
Anthropic HH-RLHF files as published (``chosen``/``rejected`` transcripts). A row that cannot
form a (prompt, reference) pair (not JSON, not UTF-8, missing fields, HH dialogues that differ)
is quarantined with its reason and counted, never dropped silently; past
``data.max_quarantine_share`` of the rows read the whole file is refused, naming the first rows.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from grao_pipe.config import DataConfig
from grao_pipe.errors import InputError


@dataclass(frozen=True)
class Prompt:
    index: int
    text: str | None  # plain-text prompt
    messages: tuple[tuple[str, str], ...] | None  # chat form: (role, content) pairs
    reference: str
    rejected: str | None = None
    id: str | None = None  # the row's ``id`` column, when it has one (imports match on it)


def _row_id(row: dict[str, Any]) -> str | None:
    v = row.get("id")
    return str(v) if isinstance(v, (str, int)) and not isinstance(v, bool) else None


@dataclass(frozen=True)
class PromptSet:
    prompts: list[Prompt]
    quarantined: list[dict[str, Any]] = field(default_factory=list)  # {"row", "reason"}


class _BadRow(Exception):
    """A row that is quarantined, with the reason."""


def check_prompt_file(path: Path) -> Path:
    """``path`` if it is a file; else an InputError naming ``data.prompts``."""
    if path.is_dir():
        raise InputError(f"data.prompts: {path} is a directory; point data.prompts at a .jsonl, .jsonl.gz "
                         "or .parquet file")
    if not path.is_file():
        raise InputError(f"data.prompts: prompt file {path} does not exist")
    return path


def _rows(path: Path) -> Iterator[tuple[int, object]]:
    """(1-based row number, parsed row, or a _BadRow for a line that cannot be parsed)."""
    check_prompt_file(path)
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except (OSError, pa.ArrowException) as e:
            raise InputError(f"{path}: not a readable Parquet file ({e}); check data.prompts") from None
        yield from enumerate(table.to_pylist(), start=1)
        return
    opener: Any = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            for lineno, raw in enumerate(f, start=1):
                if not raw.strip():
                    continue
                try:  # a UTF-8 byte-order mark (Windows editors) opens the first line
                    yield lineno, json.loads(raw.decode("utf-8-sig" if lineno == 1 else "utf-8"))
                except UnicodeDecodeError as e:
                    yield lineno, _BadRow(f"not UTF-8 text (byte {e.start})")
                except json.JSONDecodeError as e:
                    yield lineno, _BadRow(f"not valid JSON ({e.msg})")
                except ValueError as e:  # an integer of more than 4300 digits
                    yield lineno, _BadRow(f"not usable JSON ({str(e).split(';')[0]})")
                except RecursionError:
                    yield lineno, _BadRow("not usable JSON (nested too deeply)")
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise InputError(f"{path}: not a readable gzip file ({e}); check data.prompts or drop the .gz suffix") from None


def _messages(value: object) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, list) or not value:
        raise _BadRow("'messages' must be a non-empty list of {role, content}")
    out = []
    for m in value:
        if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
            raise _BadRow("each message needs string 'role' and 'content'")
        out.append((m["role"], m["content"]))
    return tuple(out)


def _generic(row: dict[str, Any], cfg: DataConfig, index: int) -> Prompt:
    ref = row.get(cfg.reference_field)
    if not isinstance(ref, str) or not ref.strip():
        raise _BadRow(f"missing or empty reference field {cfg.reference_field!r}")
    text = row.get(cfg.prompt_field)
    raw_messages = row.get(cfg.messages_field)
    messages = _messages(raw_messages) if raw_messages is not None else None
    if messages is None and (not isinstance(text, str) or not text.strip()):
        raise _BadRow(f"missing or empty prompt field {cfg.prompt_field!r} (or {cfg.messages_field!r})")
    rejected = row.get(cfg.rejected_field)
    return Prompt(index, text if isinstance(text, str) else None, messages, ref,
                  rejected if isinstance(rejected, str) else None, _row_id(row))


_HH_TURN = re.compile(r"\n\n(Human|Assistant):[ ]?")
# An optional leading system turn: "System: ..." before the first Human/Assistant turn.
_HH_SYSTEM = re.compile(r"\A(?:\n\n)?System:[ ]?(.*?)(?=\n\n(?:Human|Assistant):)", re.DOTALL)


def parse_hh_transcript(text: str) -> list[tuple[str, str]]:
    """``\\n\\nHuman: ...\\n\\nAssistant: ...`` -> [("user", ...), ("assistant", ...)], with a
    leading ``System: ...`` turn (before the first Human turn) as ("system", ...)."""
    system = _HH_SYSTEM.match(text)
    body = text[system.end() :] if system else text
    if body.startswith(("Human:", "Assistant:")):  # a first turn without the blank line before it
        body = "\n\n" + body
    parts = _HH_TURN.split(body)
    # parts = [preamble, role, content, role, content, ...]
    turns = [("user" if parts[i] == "Human" else "assistant", parts[i + 1].strip()) for i in range(1, len(parts) - 1, 2)]
    return [("system", system.group(1).strip()), *turns] if system else turns


def apply_system_prompt(messages: tuple[tuple[str, str], ...], cfg: DataConfig) -> tuple[tuple[str, str], ...]:
    """A chat prompt's messages under ``data.system_prompt``; a row's own system turn wins."""
    if cfg.system_prompt == "keep" or (messages and messages[0][0] == "system"):
        return messages
    # none: an empty system turn, which stops templates from adding their default one.
    text = (cfg.system_prompt_text or "") if cfg.system_prompt == "replace" else ""
    return (("system", text), *messages)


def _hh(row: dict[str, Any], index: int) -> Prompt:
    chosen, rejected = row.get("chosen"), row.get("rejected")
    if not isinstance(chosen, str) or not isinstance(rejected, str):
        raise _BadRow("missing 'chosen' or 'rejected' transcript")
    c, r = parse_hh_transcript(chosen), parse_hh_transcript(rejected)
    if not c or c[-1][0] != "assistant" or not r or r[-1][0] != "assistant":
        raise _BadRow("no final assistant turn")
    if any(not content for role, content in c[:-1] if role != "system") or not c[-1][1]:
        raise _BadRow("empty turn")
    if not any(role == "user" for role, _ in c[:-1]):
        raise _BadRow("no Human turn before the final Assistant turn")
    if c[:-1] != r[:-1]:
        raise _BadRow("chosen and rejected dialogues differ before the last turn")
    return Prompt(index, None, tuple(c[:-1]), c[-1][1], r[-1][1] or None, _row_id(row))


def load_prompt_set(path: Path, cfg: DataConfig) -> PromptSet:
    """The prompt set in ``path`` (a local file), read with ``cfg``'s format and field names."""
    prompts: list[Prompt] = []
    quarantined: list[dict[str, Any]] = []
    seen: dict[tuple[object, ...], int] = {}  # (prompt, reference) -> its first row
    fmt = cfg.format
    for rowno, row in _rows(path):
        try:
            if isinstance(row, _BadRow):
                raise row
            if not isinstance(row, dict):
                raise _BadRow("a row must be a JSON object")
            if fmt == "auto":
                fmt = "hh" if "chosen" in row and cfg.reference_field not in row else "generic"
            prompt = _hh(row, len(prompts)) if fmt == "hh" else _generic(row, cfg, len(prompts))
            if prompt.messages is not None:
                prompt = replace(prompt, messages=apply_system_prompt(prompt.messages, cfg))
            # A group is a (prompt, reference) pair: a repeat would be the same group twice.
            first = seen.setdefault((prompt.text, prompt.messages, prompt.reference), rowno)
            if first != rowno:
                raise _BadRow(f"duplicate of row {first} (same prompt and reference)")
            prompts.append(prompt)
        except _BadRow as e:
            quarantined.append({"row": rowno, "reason": str(e)})
        if cfg.limit is not None and len(prompts) >= cfg.limit:
            break
    read = len(prompts) + len(quarantined)
    if not prompts:
        extra = f" ({len(quarantined)} rows quarantined: {_first(path, quarantined)})" if quarantined else ""
        raise InputError(f"prompt set {path} has no usable rows{extra}; add prompts or point data.prompts elsewhere")
    if len(quarantined) > cfg.max_quarantine_share * read:
        raise InputError(f"{path}: {len(quarantined)} of {read} rows are unusable ({_first(path, quarantined)}), over "
                         f"data.max_quarantine_share={cfg.max_quarantine_share:g}; fix the rows, check the "
                         "data.*_field names, or raise the share")
    return PromptSet(prompts, quarantined)


def _first(path: Path, quarantined: list[dict[str, Any]], n: int = 3) -> str:
    shown = "; ".join(f"{path.name}:{q['row']}: {q['reason']}" for q in quarantined[:n])
    return shown + ("; ..." if len(quarantined) > n else "")


def group_id(prompt_text: str, reference: str) -> str:
    """Stable id of a group: hash of the rendered prompt and the reference."""
    return hashlib.blake2b(f"{prompt_text}\x00{reference}".encode(), digest_size=8).hexdigest()
