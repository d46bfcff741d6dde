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
    good = [f'{{"prompt": "{i}+1=", "reference": "{i + 1}"}}\n' for i in range(19)]
    p.write_bytes(("".join(good[:9]) + '{"prompt": "2+2=", \n' + "".join(good[9:18])).encode()
                  + b'{"prompt": "\xff"}\n' + good[18].encode())
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
    prompts = [f"{rng.randint(0, 99)}+{rng.randint(0, 99)}=" for _ in range(400)] + [
        "oops", " 3 + 4 = ", "12+7", "3+4=\n", "\t3\u3000+ 4=", "3++4=", "-3+4=", "\u0663+4=", "3+4=x", ""]
    answers = [rng.choice([str(rng.randint(0, 200)), f" {rng.randint(0, 9)}x", "", "abc", "007", "3 4", "\n\t7",
                           "\u0667", "99999999999999999999"]) for _ in prompts]
    refs = [rng.choice([str(rng.randint(0, 200)), "", "x"]) for _ in prompts]
    prompts, answers, refs = [*prompts, "3+4=", "3+4="], [*answers, "7", "8"], [*refs, "6", "7"]  # +1 and -1
    want = []
    for p, o, y in zip(prompts, answers, refs, strict=True):
        try:
            want.append(arith.score_one(p, o, y))
        except ValueError:
            want.append(None)
    assert arith.score_rows(prompts, answers, refs) == want
    assert {-1.0, 0.0, 1.0, None} <= set(want)


def _chat_file(tmp_path, rows):
    import json

    p = tmp_path / "chat.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(p)


def test_system_prompt_keep_replace_none(tmp_path):
    path = _chat_file(tmp_path, [
        {"messages": [{"role": "user", "content": "hi"}], "reference": "hello"},
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}], "reference": "yo"},
        {"prompt": "1+1=", "reference": "2"},
    ])
    keep = load_prompts(DataConfig(prompts=path))
    assert keep[0].messages == (("user", "hi"),)  # the template may add its default
    replaced = load_prompts(DataConfig(prompts=path, system_prompt="replace", system_prompt_text="Answer in French."))
    assert replaced[0].messages == (("system", "Answer in French."), ("user", "hi"))
    none = load_prompts(DataConfig(prompts=path, system_prompt="none"))
    assert none[0].messages == (("system", ""), ("user", "hi"))
    for prompts in (keep, replaced, none):
        assert prompts[1].messages == (("system", "Be brief."), ("user", "hi"))  # the row's own turn wins
        assert prompts[2].text == "1+1=" and prompts[2].messages is None  # plain text: no template


def test_system_prompt_keys_are_checked():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=r"needs data.system_prompt_text"):
        DataConfig(system_prompt="replace")
    with pytest.raises(ValidationError, match=r"only used with data.system_prompt=replace"):
        DataConfig(system_prompt_text="x")


def test_hh_rows_carry_their_own_system_turn(tmp_path):
    import json

    from grao_pipe.prompts import parse_hh_transcript

    t = "System: You are a pirate.\n\nHuman: Hi\n\nAssistant: Arr"
    assert parse_hh_transcript(t) == [("system", "You are a pirate."), ("user", "Hi"), ("assistant", "Arr")]
    assert parse_hh_transcript("\n\n" + t) == parse_hh_transcript(t)
    assert parse_hh_transcript("\n\nHuman: Hi\n\nAssistant: Yo")[0] == ("user", "Hi")
    p = tmp_path / "hh.jsonl"
    p.write_text(json.dumps({"chosen": "\n\n" + t, "rejected": "\n\nSystem: You are a pirate.\n\nHuman: Hi\n\nAssistant: Hello"}) + "\n")
    (row,) = load_prompts(DataConfig(prompts=str(p), system_prompt="none"))
    assert row.messages == (("system", "You are a pirate."), ("user", "Hi")) and row.reference == "Arr"
    assert row.rejected == "Hello"
