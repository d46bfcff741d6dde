import pytest

from grao_pipe.config import DataConfig
from grao_pipe.errors import InputError
from grao_pipe.prompts import group_id, load_prompt_set
from grao_pipe.storage import local_input
from grao_pipe.tasks import arith


def load_prompts(cfg: DataConfig):
    return load_prompt_set(local_input(cfg.prompts), cfg).prompts


def test_builtin_prompt_set_loads():
    prompts = load_prompts(DataConfig())
    assert len(prompts) == 100 and prompts[7].text == "0+7=" and prompts[7].reference == "7"


def test_malformed_row_is_named(tmp_path):
    p = tmp_path / "p.jsonl"
    p.write_text('{"prompt": "1+1=", "reference": "2"}\n{"prompt": "2+2=", \n')
    with pytest.raises(InputError, match=r"1 of 2 rows are unusable \(p.jsonl:2: not valid JSON"):
        load_prompts(DataConfig(prompts=str(p)))


def test_missing_reference_is_named(tmp_path):
    p = tmp_path / "p.jsonl"
    p.write_text('{"prompt": "1+1=", "answer": "2"}\n')
    with pytest.raises(InputError, match=r"p.jsonl:1: missing or empty reference field 'reference'"):
        load_prompts(DataConfig(prompts=str(p)))


def test_bad_rows_are_quarantined_under_the_share(tmp_path):
    p = tmp_path / "p.jsonl"
    good = '{"prompt": "1+1=", "reference": "2"}\n'
    p.write_bytes((good * 9 + '{"prompt": "2+2=", \n' + good * 9).encode() + b'{"prompt": "\xff"}\n' + good.encode())
    ps = load_prompt_set(p, DataConfig(prompts=str(p)))
    assert len(ps.prompts) == 19
    assert ps.quarantined == [{"row": 10, "reason": "not valid JSON (Expecting property name enclosed in double quotes)"},
                              {"row": 20, "reason": "not UTF-8 text (byte 12)"}]


def test_empty_prompt_set(tmp_path):
    p = tmp_path / "p.jsonl"
    p.write_text("\n")
    with pytest.raises(InputError, match="has no usable rows"):
        load_prompts(DataConfig(prompts=str(p)))


def test_messages_rows_and_custom_fields(tmp_path):
    p = tmp_path / "p.jsonl"
    p.write_text('{"messages": [{"role": "user", "content": "hi"}], "ans": "hello", "rejected": "go"}\n')
    (row,) = load_prompts(DataConfig(prompts=str(p), reference_field="ans"))
    assert row.messages == (("user", "hi"),) and row.reference == "hello" and row.rejected == "go"


def test_group_id_is_stable_and_distinguishes_references():
    assert group_id("1+1=", "2") == group_id("1+1=", "2") != group_id("1+1=", "3")


def test_arith_scorer_is_relative_to_reference():
    assert arith.score_one("3+4=", "7", "7") == 0.0
    assert arith.score_one("3+4=", "8", "7") == -1.0
    assert arith.score_one("3+4=", " 7", "6") == 1.0


def test_the_vectorised_arith_scorer_equals_the_row_rule():
    import random

    rng = random.Random(0)
    prompts = [f"{rng.randint(0, 99)}+{rng.randint(0, 99)}=" for _ in range(400)] + ["oops", " 3 + 4 = ", "12+7"]
    answers = [rng.choice([str(rng.randint(0, 200)), f" {rng.randint(0, 9)}x", "", "abc", "007", "3 4"]) for _ in prompts]
    refs = [rng.choice([str(rng.randint(0, 200)), "", "x"]) for _ in prompts]
    want = []
    for p, o, y in zip(prompts, answers, refs, strict=True):
        try:
            want.append(arith.score_one(p, o, y))
        except ValueError:
            want.append(None)
    assert arith.score_rows(prompts, answers, refs) == want
    assert {-1.0, 0.0, 1.0, None} <= set(want)
