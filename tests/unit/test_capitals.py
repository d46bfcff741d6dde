"""The bundled capitals task: its files, its train/eval split, and its comparative scorer."""

from __future__ import annotations

import json
from collections import Counter
from importlib import resources

import pytest

from grao_pipe.config import DataConfig
from grao_pipe.prompts import load_prompts
from grao_pipe.tasks import capitals
from grao_pipe.tasks.capitals import country_of, quality, score

CHATML = ("<|im_start|>system\n<|im_end|>\n<|im_start|>user\nWhat is the capital of {c}? Answer with just the "
          "city name.<|im_end|>\n<|im_start|>assistant\n")


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


def test_references_are_sometimes_imperfect():
    prompts = load_prompts(DataConfig(prompts="builtin:capitals-train"))
    levels = Counter(quality(country_of(p.messages[-1][1]), p.reference) for p in prompts)
    assert min(levels[2], levels[1]) >= 30 and levels[0] >= 15  # bare, verbose and wrong references


@pytest.mark.parametrize("answer,level", [
    ("Tokyo", 2), ("Tokyo.", 2), ("tokyo, Japan", 2), ("The capital is Tokyo.", 2),
    ("The capital of Japan is Tokyo.", 1),  # right, but not "just the city name"
    ("The capital of Japan is Osaka.", 0), ("Osaka, not Tokyo", 0), ("I don't know.", 0), ("", 0),
])
def test_quality_levels(answer, level):
    assert quality("Japan", answer) == level


def test_accents_spellings_and_lookalikes():
    assert quality("Brazil", "Brasília") == 2 and quality("Colombia", "Bogotá") == 2
    assert quality("Ukraine", "Kiev") == 2 and quality("the United States", "Washington, D.C.") == 2
    assert quality("Tunisia", "The capital of Tunisia is Tunis.") == 1  # "Tunisia" is not "Tunis"
    assert quality("Tunisia", "Tunisia") == 0
    assert quality("Mexico", "Mexico") == 0 and quality("Mexico", "Mexico City") == 2


def test_score_is_comparative_and_reads_any_rendering():
    plain = "What is the capital of Peru? Answer with just the city name."
    for prompt in (plain, CHATML.format(c="Peru")):
        assert score(prompt, "Lima", "Lima") == 0.0
        assert score(prompt, "The capital of Peru is Lima.", "Lima") == -1.0
        assert score(prompt, "Lima", "The capital of Peru is Lima.") == 1.0
        assert score(prompt, "The capital of Peru is Lima.", "Cusco") == 1.0
        assert score(prompt, "Cusco", "Cusco") == 0.0
    with pytest.raises(ValueError, match="no known"):
        score("What is the capital of Atlantis? Answer with just the city name.", "x", "y")
