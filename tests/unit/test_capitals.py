"""The bundled capitals task: its files, its train/eval split, and its comparative scorer."""

from __future__ import annotations

import json
from collections import Counter
from importlib import resources

import pytest

from grao_pipe.config import DataConfig
from grao_pipe.prompts import load_prompt_set
from grao_pipe.storage import local_input
from grao_pipe.tasks import capitals
from grao_pipe.tasks.capitals import country_of, right, score


def load_prompts(cfg: DataConfig):
    return load_prompt_set(local_input(cfg.prompts), cfg).prompts


CHATML = ("<|im_start|>system\n<|im_end|>\n<|im_start|>user\nWhat is the capital of {c}?<|im_end|>\n"
          "<|im_start|>assistant\n")


def test_shipped_files_are_what_make_rows_writes():
    data = resources.files("grao_pipe") / "data"
    train, held_out = capitals.make_rows()
    for name, rows in (("capitals-train", train), ("capitals-eval", held_out)):
        lines = (data / f"{name}.jsonl").read_text().splitlines()
        assert [json.loads(x) for x in lines] == rows, f"regenerate with python -m grao_pipe.tasks.capitals ({name})"


def test_eval_countries_are_held_out():
    train = load_prompts(DataConfig(prompts="builtin:capitals-train"))
    held_out = load_prompts(DataConfig(prompts="builtin:capitals-eval"))
    asked = [{country_of(p.messages[-1][1]) for p in ps} for ps in (train, held_out)]
    assert len(asked[0]) == len(train) == 87 and len(asked[1]) == len(held_out) == 37
    assert not asked[0] & asked[1]
    assert all(p.messages is not None and p.messages[-1][0] == "user" and p.rejected for p in train)


def test_references_are_sometimes_wrong():
    prompts = load_prompts(DataConfig(prompts="builtin:capitals-train"))
    rights = Counter(right(country_of(p.messages[-1][1]), p.reference) for p in prompts)
    assert rights[True] >= 60 and rights[False] >= 15  # so R = +1 happens as well as 0 and -1
    assert all(not right(country_of(p.messages[-1][1]), p.rejected or "") for p in prompts)


@pytest.mark.parametrize("answer,ok", [
    ("Tokyo", True), ("Tokyo.", True), ("tokyo, Japan", True), ("The capital of Japan is Tokyo.", True),
    ("The capital of Japan is Osaka.", False), ("Osaka, not Tokyo", False), ("Tokyo, not Osaka", True),
    ("I don't know.", False), ("", False), ("Japan is an island country in East Asia.", False),
])
def test_right_answers(answer, ok):
    assert right("Japan", answer) is ok


def test_accents_spellings_and_lookalikes():
    assert right("Brazil", "Brasília") and right("Colombia", "Bogotá")
    assert right("Ukraine", "Kiev") and right("the United States", "Washington, D.C.")
    assert right("Tunisia", "The capital of Tunisia is Tunis.")
    assert not right("Tunisia", "Tunisia is in North Africa.")  # "Tunisia" is not "Tunis"
    assert not right("Mexico", "Mexico") and right("Mexico", "Mexico City")


def test_score_is_comparative_and_reads_any_rendering():
    plain = "What is the capital of Peru?"
    for prompt in (plain, CHATML.format(c="Peru")):
        assert score(prompt, "Lima", "Lima") == 0.0
        assert score(prompt, "The capital of Peru is Lima.", "Lima") == 0.0
        assert score(prompt, "Cusco", "The capital of Peru is Lima.") == -1.0
        assert score(prompt, "The capital of Peru is Lima.", "Cusco") == 1.0
        assert score(prompt, "Cusco", "Cusco") == 0.0
    with pytest.raises(ValueError, match="no known"):
        score("What is the capital of Atlantis?", "x", "y")
