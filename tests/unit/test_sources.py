"""Prompt sources: HH-RLHF transcripts (with quarantine), gzipped JSONL, Parquet."""

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from grao_pipe.config import DataConfig
from grao_pipe.errors import InputError
from grao_pipe.prompts import load_prompt_set, parse_hh_transcript

GOOD = {
    "chosen": "\n\nHuman: How do I boil an egg?\n\nAssistant: Put it in boiling water.\n\nHuman: How long?"
    "\n\nAssistant: About nine minutes for a hard yolk.",
    "rejected": "\n\nHuman: How do I boil an egg?\n\nAssistant: Put it in boiling water.\n\nHuman: How long?"
    "\n\nAssistant: Forever.",
}


def _write_jsonl_gz(path, rows):
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def test_parse_hh_transcript():
    turns = parse_hh_transcript(GOOD["chosen"])
    assert [r for r, _ in turns] == ["user", "assistant", "user", "assistant"]
    assert turns[2] == ("user", "How long?")


def test_hh_rows_and_quarantine(tmp_path):
    rows = [
        GOOD,
        {"chosen": GOOD["chosen"], "rejected": GOOD["rejected"].replace("boil", "fry")},  # differ earlier
        {"chosen": "\n\nHuman: hi", "rejected": "\n\nHuman: hi"},  # no assistant turn
        {"chosen": "\n\nHuman: \n\nAssistant: ok", "rejected": "\n\nHuman: \n\nAssistant: no"},  # empty turn
        {"chosen": "\n\nHuman: a?\n\nAssistant: b", "rejected": "\n\nHuman: a?\n\nAssistant: c"},
    ]
    path = tmp_path / "hh.jsonl.gz"
    _write_jsonl_gz(path, rows)
    ps = load_prompt_set(path, DataConfig(prompts=str(path), max_quarantine_share=0.6))
    assert len(ps.prompts) == 2
    first = ps.prompts[0]
    assert first.messages == (("user", "How do I boil an egg?"), ("assistant", "Put it in boiling water."),
                              ("user", "How long?"))
    assert first.reference == "About nine minutes for a hard yolk." and first.rejected == "Forever."
    assert ps.quarantined == [
        {"row": 2, "reason": "chosen and rejected dialogues differ before the last turn"},
        {"row": 3, "reason": "no final assistant turn"},
        {"row": 4, "reason": "empty turn"},
    ]


def test_parquet_source_with_custom_columns(tmp_path):
    path = tmp_path / "p.parquet"
    pq.write_table(pa.table({"question": ["1+1=", "2+2="], "answer": ["2", "4"]}), path)
    ps = load_prompt_set(path, DataConfig(prompts=str(path), prompt_field="question", reference_field="answer"))
    assert [(p.text, p.reference) for p in ps.prompts] == [("1+1=", "2"), ("2+2=", "4")]


def test_all_rows_quarantined_is_an_error(tmp_path):
    path = tmp_path / "hh.jsonl"
    path.write_text(json.dumps({"chosen": "\n\nHuman: hi", "rejected": "\n\nHuman: hi"}) + "\n")
    with pytest.raises(InputError, match=r"no usable rows \(1 rows quarantined: hh.jsonl:1: no final assistant turn\)"):
        load_prompt_set(path, DataConfig(prompts=str(path), format="hh"))
