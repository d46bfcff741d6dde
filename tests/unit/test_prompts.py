import pytest

from grao_pipe.config import DataConfig
from grao_pipe.errors import InputError
from grao_pipe.prompts import group_id, load_prompts
from grao_pipe.tasks import arith


def test_builtin_prompt_set_loads():
    prompts = load_prompts(DataConfig())
    assert len(prompts) == 100 and prompts[7].text == "0+7=" and prompts[7].reference == "7"


def test_malformed_row_is_named(tmp_path):
    p = tmp_path / "p.jsonl"
    p.write_text('{"prompt": "1+1=", "reference": "2"}\n{"prompt": "2+2=", \n')
    with pytest.raises(InputError, match=r"p.jsonl:2: not valid JSON"):
        load_prompts(DataConfig(prompts=str(p)))


def test_missing_reference_is_named(tmp_path):
    p = tmp_path / "p.jsonl"
    p.write_text('{"prompt": "1+1=", "answer": "2"}\n')
    with pytest.raises(InputError, match=r"p.jsonl:1: missing or empty reference field 'reference'"):
        load_prompts(DataConfig(prompts=str(p)))


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
    assert arith.score("3+4=", "7", "7") == 0.0
    assert arith.score("3+4=", "8", "7") == -1.0
    assert arith.score("3+4=", " 7", "6") == 1.0


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


def test_system_prompt_changes_the_fingerprint_only_when_set(tmp_path):
    from grao_pipe.prompts import prompt_set_fingerprint

    path = _chat_file(tmp_path, [{"messages": [{"role": "user", "content": "hi"}], "reference": "hello"}])
    keep = prompt_set_fingerprint(DataConfig(prompts=path))
    assert "system_prompt" not in keep  # unchanged cache keys for configs that do not use it
    assert prompt_set_fingerprint(DataConfig(prompts=path, system_prompt="none")) != keep


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
