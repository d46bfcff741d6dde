"""The geo task of the real-model replication: its files, its by-country splits, its imperfect
references, and its comparative scorer on each question kind."""

from __future__ import annotations

import json
from collections import Counter
from importlib import resources

import pytest

from grao_pipe.config import DataConfig
from grao_pipe.prompts import load_prompt_set
from grao_pipe.storage import local_input
from grao_pipe.tasks import geo
from grao_pipe.tasks.geo import ask, right, score

CHATML = "<|im_start|>system\n<|im_end|>\n<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n"


def _prompts(split: str):
    return load_prompt_set(local_input(f"builtin:geo-{split}"), DataConfig(prompts=f"builtin:geo-{split}")).prompts


def test_shipped_files_are_what_make_rows_writes():
    data = resources.files("grao_pipe") / "data"
    for split, rows in geo.make_rows().items():
        lines = (data / f"geo-{split}.jsonl").read_text().splitlines()
        assert [json.loads(x) for x in lines] == rows, f"regenerate with python -m grao_pipe.tasks.geo ({split})"


def test_splits_are_by_country_and_the_test_split_has_300_prompts():
    asked = {}
    for split in ("train", "validation", "test"):
        prompts = _prompts(split)
        assert all(p.id and p.rejected for p in prompts)
        asked[split] = {ask(p.messages[-1][1])[1] for p in prompts}
        assert len(prompts) == len({p.id for p in prompts})
    assert len(_prompts("test")) >= 300 and len(asked["test"]) == geo.SPLITS["test"]
    assert not asked["train"] & asked["test"] and not asked["train"] & asked["validation"]
    assert not asked["validation"] & asked["test"]
    assert set(geo.CONTINENTS) == set(geo.COUNTRIES)


def test_references_are_right_and_sometimes_wrong_or_verbose_in_every_kind():
    for split in ("train", "test"):
        counts: Counter[tuple[str, bool]] = Counter()
        for p in _prompts(split):
            kind, country = ask(p.messages[-1][1])
            counts[kind, right(kind, country, p.reference)] += 1
            assert not right(kind, country, p.rejected or "")
        for kind in geo.QUESTIONS:  # so R = +1 happens as well as 0 and -1
            assert counts[kind, True] > 2 * counts[kind, False] > 0


@pytest.mark.parametrize("kind,country,answer,ok", [
    ("capital", "Peru", "The capital of Peru is Lima.", True),
    ("capital", "Peru", "Cusco, not Lima", False),
    ("country", "Peru", "Lima is the capital of Peru.", True),
    ("country", "Peru", "Lima is the capital of Chile, not Peru.", False),
    ("country", "Mexico", "Mexico City is the capital of Nicaragua.", False),  # a city is not a country
    ("country", "Mexico", "Mexico City is the capital of Mexico.", True),
    ("country", "the United States", "It is the USA.", True),
    ("country", "the United Kingdom", "London is the capital of Britain.", True),
    ("continent", "Peru", "Peru is in South America.", True),
    ("continent", "Peru", "Peru is in North America, not South America.", False),
    ("continent", "Peru", "Peru is in the Americas.", False),
    ("continent", "Honduras", "Honduras is in Central America.", True),
    ("continent", "Turkey", "Turkey is in Europe.", True),  # two continents: either is right
    ("continent", "Turkey", "Turkey is in Asia.", True),
    ("continent", "Japan", "Japan is in East Asia.", True),
    ("continent", "Iraq", "Iraq is in the Middle East.", True),
    ("continent", "Kenya", "Kenya is a country.", False),
])
def test_right_answers(kind, country, answer, ok):
    assert right(kind, country, answer) is ok


def test_score_is_comparative_and_reads_any_rendering():
    for q, good, bad in (("What is the capital of Peru?", "Lima", "Cusco"),
                         ("Which country has Lima as its capital?", "Peru", "Chile"),
                         ("Which continent is Peru in?", "South America", "Asia")):
        for prompt in (q, CHATML.format(q=q)):
            assert score(prompt, good, good) == 0.0 and score(prompt, bad, bad) == 0.0
            assert score(prompt, good, bad) == 1.0 and score(prompt, bad, good) == -1.0
    with pytest.raises(ValueError, match="no known"):
        score("What is the capital of Atlantis?", "x", "y")
    with pytest.raises(ValueError, match="no known"):
        score("Which continent is Australia in?", "Oceania", "Oceania")  # not asked: its own name


def test_breakdown_is_the_mean_over_seeds_of_each_kinds_right_share():
    def row(seed, q, answer, base):
        return {"split": "test", "variant": "grao", "seed": seed, "prompt": CHATML.format(q=q), "answer": answer,
                "base_answer": base, "reference": "The capital of Peru is Lima."}
    rows = [row(0, "What is the capital of Peru?", "Lima", "Cusco"), row(0, "What is the capital of Chile?", "x", "x"),
            row(1, "What is the capital of Peru?", "Lima", "Lima"), row(1, "What is the capital of Chile?", "Santiago", "x"),
            row(0, "Which continent is Peru in?", "Asia", "South America"),
            row(1, "Which continent is Peru in?", "Asia", "South America"),
            row(0, "Which country has Lima as its capital?", "Peru", "Peru"),
            row(1, "Which country has Lima as its capital?", "Peru", "Peru")]
    table = geo.breakdown(rows).splitlines()
    assert table[0] == "| answers | capital (n=2) | country (n=1) | continent (n=1) |"
    # starting policy: capital seed 0 0/2, seed 1 1/2 -> 0.25; trained: 1/2, 2/2 -> 0.75
    assert table[2] == "| starting policy | 0.250 | 1.000 | 1.000 |"
    assert table[4] == "| grao | 0.750 | 1.000 | 0.000 |"
    assert table[3].startswith("| references | 0.500 |")  # right for Peru, not for Chile
