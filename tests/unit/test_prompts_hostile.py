"""Prompt files a hostile or careless user hands over: each bad row is quarantined with its
reason (never a traceback), a BOM is not a bad row, a directory is named as such."""

import json

import pytest

from grao_pipe.config import DataConfig
from grao_pipe.errors import InputError
from grao_pipe.prompts import load_prompt_set, parse_hh_transcript

GOOD = b'{"prompt": "1+1=", "reference": "2"}\n'


def _load(tmp_path, data: bytes, **cfg):
    p = tmp_path / "p.jsonl"
    p.write_bytes(data)
    return load_prompt_set(p, DataConfig(prompts=str(p), limit=None, max_quarantine_share=1.0, **cfg))


def test_a_byte_order_mark_does_not_quarantine_the_first_row(tmp_path):
    s = _load(tmp_path, b"\xef\xbb\xbf" + GOOD + GOOD.replace(b"1+1", b"1+2"))
    assert len(s.prompts) == 2 and s.quarantined == []


@pytest.mark.parametrize("row, reason", [
    (b'{"prompt": ' + b"1" * 5000 + b', "reference": "2"}', "not usable JSON (Exceeds the limit (4300 digits)"),
    (b'{"prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b', "reference": "2"}', "not usable JSON (nested too deeply)"),
])
def test_rows_json_cannot_hold_are_quarantined(tmp_path, row, reason):
    s = _load(tmp_path, row + b"\n" + GOOD)
    assert len(s.prompts) == 1 and s.quarantined[0]["row"] == 1 and s.quarantined[0]["reason"].startswith(reason)


def test_a_directory_is_named_as_such(tmp_path):
    with pytest.raises(InputError, match="is a directory"):
        load_prompt_set(tmp_path, DataConfig(prompts=str(tmp_path)))


def test_hh_rows_without_a_human_turn_are_quarantined(tmp_path):
    rows = [{"chosen": "\n\nAssistant: ok", "rejected": "\n\nAssistant: no"},
            {"chosen": "Human: hi\n\nAssistant: ok", "rejected": "Human: hi\n\nAssistant: no"},
            {"chosen": "\n\nHuman: 1+1=\n\nAssistant: 2", "rejected": "\n\nHuman: 1+1=\n\nAssistant: 3"}]
    s = _load(tmp_path, "".join(json.dumps(r) + "\n" for r in rows).encode(), system_prompt="none")
    assert s.quarantined == [{"row": 1, "reason": "no Human turn before the final Assistant turn"}]
    assert [m for m in s.prompts[0].messages if m[0] == "user"] == [("user", "hi")]
    assert parse_hh_transcript("Human: hi\n\nAssistant: ok") == [("user", "hi"), ("assistant", "ok")]
