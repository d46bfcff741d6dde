"""A larger verifiable chat task for real pretrained models: three geography questions per country.

- ``capital``: "What is the capital of Peru?" (right: names Lima);
- ``country``: "Which country has Lima as its capital?" (right: names Peru);
- ``continent``: "Which continent is Peru in?" (right: names South America).

156 countries (``capitals.CAPITALS`` and ``EXTRA``) give 467 prompts (Australia has no continent
question: its answer would be its own name). The splits are by country, so no fact of a held-out
prompt is asked in training in another direction: ``builtin:geo-train`` (43 countries),
``builtin:geo-validation`` (12) and ``builtin:geo-test`` (101 countries, 302 prompts).
SmolLM2-135M-Instruct answers each question type right about 40-55 % of the time (measured:
docs/replication-real.md), so there is room to learn and to forget.

References are imperfect on purpose, as in the capitals task: 3 rows in 5 a short right answer,
1 in 5 a right but verbose one, 1 in 5 a wrong one; the rejected answer is always wrong. The
scorer is comparative and reference-relative, R(o, y) = right(o) - right(y) in {-1, 0, +1}, with
"right" checked against the table, never against the reference.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

from grao_pipe.tasks.capitals import CAPITALS, _fold, named_first

# country -> (capital, accepted spellings, a plausible wrong city); names that are not substrings
# of another country's name (no Guinea beside Papua New Guinea, no South Sudan beside Sudan).
EXTRA: dict[str, tuple[str, tuple[str, ...], str]] = {
    "the Netherlands": ("Amsterdam", (), "Rotterdam"),
    "Switzerland": ("Bern", ("Berne",), "Zurich"),
    "Liechtenstein": ("Vaduz", (), "Schaan"),
    "Georgia": ("Tbilisi", (), "Batumi"),
    "Yemen": ("Sanaa", ("Sana'a",), "Aden"),
    "Bahrain": ("Manama", (), "Muharraq"),
    "Myanmar": ("Naypyidaw", ("Nay Pyi Taw", "Naypyitaw"), "Yangon"),
    "Indonesia": ("Jakarta", (), "Surabaya"),
    "Brunei": ("Bandar Seri Begawan", (), "Seria"),
    "Timor-Leste": ("Dili", (), "Baucau"),
    "the Maldives": ("Male", (), "Addu City"),
    "Libya": ("Tripoli", (), "Benghazi"),
    "Chad": ("N'Djamena", ("Ndjamena",), "Moundou"),
    "Mauritania": ("Nouakchott", (), "Nouadhibou"),
    "Togo": ("Lome", (), "Sokode"),
    "the Gambia": ("Banjul", (), "Serekunda"),
    "Tanzania": ("Dodoma", (), "Dar es Salaam"),
    "Lesotho": ("Maseru", (), "Teyateyaneng"),
    "Cape Verde": ("Praia", (), "Mindelo"),
    "Mauritius": ("Port Louis", (), "Curepipe"),
    "Seychelles": ("Victoria", (), "Anse Royale"),
    "the Comoros": ("Moroni", (), "Mutsamudu"),
    "Belize": ("Belmopan", (), "San Ignacio"),
    "the Bahamas": ("Nassau", (), "Freeport"),
    "Barbados": ("Bridgetown", (), "Speightstown"),
    "Trinidad and Tobago": ("Port of Spain", ("Port-of-Spain",), "San Fernando"),
    "Saint Lucia": ("Castries", (), "Vieux Fort"),
    "Guyana": ("Georgetown", (), "Linden"),
    "Suriname": ("Paramaribo", (), "Lelydorp"),
    "Samoa": ("Apia", (), "Salelologa"),
    "Vanuatu": ("Port Vila", (), "Luganville"),
    "the Solomon Islands": ("Honiara", (), "Gizo"),
}
COUNTRIES: dict[str, tuple[str, tuple[str, ...], str]] = {**CAPITALS, **EXTRA}

# Other accepted names of a country (for "Which country has X as its capital?").
COUNTRY_ALIASES: dict[str, tuple[str, ...]] = {
    "the United Kingdom": ("UK", "Britain", "Great Britain"), "the United States": ("USA", "U.S.", "United States of America"),
    "the Czech Republic": ("Czechia",), "North Macedonia": ("Macedonia",), "the United Arab Emirates": ("UAE",),
    "Timor-Leste": ("East Timor",), "Cape Verde": ("Cabo Verde",), "Myanmar": ("Burma",), "the Netherlands": ("Holland",),
}

CONTINENT_NAMES = ("Africa", "Asia", "Europe", "North America", "South America", "Oceania")
# Other accepted names of a continent (or of a region wholly inside it).
CONTINENT_ALIASES: dict[str, tuple[str, ...]] = {
    "North America": ("Central America", "the Caribbean"), "Oceania": ("Australasia", "Australia"),
    "Asia": ("the Middle East",),
}
_BY_CONTINENT = {
    "Europe": "France Germany Italy Spain Portugal|the United Kingdom|Ireland Belgium Austria Poland|the Czech Republic|"
              "Slovakia Hungary Romania Bulgaria Greece Serbia Croatia Slovenia Norway Sweden Finland Denmark Iceland "
              "Estonia Latvia Lithuania Ukraine Belarus Albania|North Macedonia|Montenegro|Bosnia and Herzegovina|"
              "Moldova Malta|the Netherlands|Switzerland Liechtenstein",
    "Asia": "Japan China|South Korea|North Korea|India Pakistan Bangladesh Nepal Thailand Vietnam Cambodia Laos"
            "|the Philippines|Malaysia Mongolia Afghanistan Iran Iraq|Saudi Arabia|Syria Jordan Lebanon Qatar Oman"
            "|the United Arab Emirates|Uzbekistan Turkmenistan Kyrgyzstan Tajikistan Bhutan Yemen Bahrain Myanmar "
            "Indonesia Brunei Timor-Leste|the Maldives",
    "Africa": "Kenya Ethiopia Nigeria Ghana Morocco Algeria Tunisia Sudan Senegal Mali Uganda Rwanda Zimbabwe Zambia "
              "Angola Mozambique Madagascar Namibia Botswana Cameroon Somalia Niger|Sierra Leone|Liberia|Burkina Faso|"
              "Malawi Gabon Eritrea Libya Chad Mauritania Togo|the Gambia|Tanzania Lesotho|Cape Verde|Mauritius "
              "Seychelles|the Comoros",
    "North America": "the United States|Canada Mexico Cuba Jamaica Haiti|the Dominican Republic|Honduras Nicaragua"
                     "|Costa Rica|El Salvador|Belize|the Bahamas|Barbados|Trinidad and Tobago|Saint Lucia",
    "South America": "Brazil Argentina Chile Peru Colombia Venezuela Ecuador Uruguay Paraguay Guyana Suriname",
    "Oceania": "Australia|New Zealand|Fiji|Papua New Guinea|Samoa Vanuatu|the Solomon Islands",
}
# Countries on two continents: either answer is right.
_TWO_CONTINENTS = {"Russia": ("Europe", "Asia"), "Turkey": ("Asia", "Europe"), "Kazakhstan": ("Asia", "Europe"),
                   "Armenia": ("Asia", "Europe"), "Azerbaijan": ("Asia", "Europe"), "Georgia": ("Asia", "Europe"),
                   "Cyprus": ("Europe", "Asia"), "Egypt": ("Africa", "Asia")}


def _continents() -> dict[str, tuple[str, ...]]:
    out: dict[str, tuple[str, ...]] = dict(_TWO_CONTINENTS)
    for continent, spec in _BY_CONTINENT.items():
        for chunk in spec.split("|"):
            # "|" separates multi-word names; single words are separated by spaces.
            names = [chunk] if chunk in COUNTRIES else chunk.split()
            for name in names:
                out[name] = (continent,)
    return out


CONTINENTS = _continents()
# Its continent would be its own name: no continent question.
NO_CONTINENT_QUESTION = frozenset({"Australia"})
WRONG_CONTINENT = {"Europe": "Asia", "Asia": "Europe", "Africa": "Asia", "North America": "South America",
                   "South America": "North America", "Oceania": "Asia"}

QUESTIONS = {
    "capital": "What is the capital of {country}?",
    "country": "Which country has {capital} as its capital?",
    "continent": "Which continent is {country} in?",
}
_ASKED = {
    "capital": re.compile(r"What is the capital of (.+?)\?"),
    "country": re.compile(r"Which country has (.+?) as its capital\?"),
    "continent": re.compile(r"Which continent is (.+?) in\?"),
}
SPLITS = {"test": 101, "validation": 12}  # countries; train gets the rest


def _pattern(names: tuple[str, ...] | list[str]) -> re.Pattern[str]:
    alts = sorted({_fold(n) for n in names}, key=len, reverse=True)  # longest first: "north america" before "america"
    return re.compile(r"(?<![a-z])(?:" + "|".join(re.escape(a) for a in alts) + r")(?![a-z])")


def _bare(country: str) -> str:
    return country.removeprefix("the ")


_CITY = {c: _pattern((cap, *alts)) for c, (cap, alts, _) in COUNTRIES.items()}
_ANY_CITY = _pattern([n for cap, alts, wrong in COUNTRIES.values() for n in (cap, *alts, wrong)])
_COUNTRY = {c: _pattern((_bare(c), *COUNTRY_ALIASES.get(c, ()))) for c in COUNTRIES}
_ANY_COUNTRY = _pattern([n for c in COUNTRIES for n in (_bare(c), *COUNTRY_ALIASES.get(c, ()))])
_CONTINENT = {k: _pattern((k, *(a.removeprefix("the ") for a in CONTINENT_ALIASES.get(k, ())))) for k in CONTINENT_NAMES}
_CAPITAL_OF = {cap: c for c, (cap, _, _) in COUNTRIES.items()}


def ask(prompt: str) -> tuple[str, str]:
    """(question kind, country) of a prompt (rendered with any chat template)."""
    for kind, pattern in _ASKED.items():
        m = pattern.search(prompt)
        if m is None:
            continue
        subject = m.group(1)
        country = _CAPITAL_OF.get(subject) if kind == "country" else subject
        if country in COUNTRIES and (kind != "continent" or country not in NO_CONTINENT_QUESTION):
            return kind, country
    raise ValueError(f"geo scorer: no known capital, country or continent question in {prompt[-200:]!r}")


def right(kind: str, country: str, answer: str) -> bool:
    """Is ``answer`` right for the question ``kind`` about ``country``?"""
    text = _fold(answer)
    if kind == "capital":
        return named_first(text, _CITY[country], _ANY_CITY)
    if kind == "country":
        # City names are not country names ("Mexico City is the capital of Nicaragua" names no Mexico).
        return named_first(_ANY_CITY.sub("#", text), _COUNTRY[country], _ANY_COUNTRY)
    accepted = CONTINENTS[country]
    first = {k: m.start() for k in CONTINENT_NAMES if (m := _CONTINENT[k].search(text)) is not None}
    hits = [i for k, i in first.items() if k in accepted]
    others = [i for k, i in first.items() if k not in accepted]
    return bool(hits) and (not others or min(others) > min(hits))


def score(prompt: str, response: str, reference: str) -> float:
    """R(o, y) = right(o) - right(y): +1 better than the reference, 0 as good, -1 worse."""
    kind, country = ask(prompt)
    return float(right(kind, country, response)) - float(right(kind, country, reference))


def _answers(kind: str, country: str, other: str) -> tuple[str, str, str]:
    """(short right answer, verbose right answer, wrong answer) to one question."""
    capital, _, wrong_city = COUNTRIES[country]
    continent = CONTINENTS[country][0]
    up = country[0].upper() + country[1:]
    if kind == "capital":
        return (f"The capital of {country} is {capital}.",
                f"{up} has {capital} as its capital city, and {wrong_city} is another of its cities.",
                f"The capital of {country} is {wrong_city}.")
    if kind == "country":
        return (f"{capital} is the capital of {country}.",
                f"{capital} is the capital city of {country}, a country in {continent}.",
                f"{capital} is the capital of {other}.")
    wrong = next(k for k in (WRONG_CONTINENT[continent], *CONTINENT_NAMES) if k not in CONTINENTS[country])
    return (f"{up} is in {continent}.", f"{up} is a country in {continent}, and its capital is {capital}.",
            f"{up} is in {wrong}.")


def _transcript(question: str, answer: str) -> str:
    return f"\n\nHuman: {question}\n\nAssistant: {answer}"


def make_rows(seed: int = 0) -> dict[str, list[dict[str, str]]]:
    """The three splits (by country) in HH format, each row with an ``id`` (kind:country)."""
    countries = sorted(COUNTRIES)
    random.Random(seed).shuffle(countries)
    n_test, n_val = SPLITS["test"], SPLITS["validation"]
    by_split = {"test": countries[:n_test], "validation": countries[n_test:n_test + n_val],
                "train": countries[n_test + n_val:]}
    # A wrong country for "Which country has X as its capital?": the next one of its continent.
    same = {k: sorted(c for c in COUNTRIES if CONTINENTS[c][0] == k) for k in CONTINENT_NAMES}
    out: dict[str, list[dict[str, str]]] = {}
    i = 0
    for split, names in by_split.items():
        rows = []
        for country in names:
            peers = same[CONTINENTS[country][0]]
            other = peers[(peers.index(country) + 1) % len(peers)]
            for kind, template in QUESTIONS.items():
                if kind == "continent" and country in NO_CONTINENT_QUESTION:
                    continue
                question = template.format(country=country, capital=COUNTRIES[country][0])
                short, verbose, wrong = _answers(kind, country, other)
                chosen = {0: short, 1: short, 2: short, 3: verbose, 4: wrong}[i % 5]
                rejected = wrong if i % 5 != 4 else wrong.rstrip(".")  # as wrong as the reference, shorter
                rows.append({"id": f"{kind}:{_bare(country)}", "chosen": _transcript(question, chosen),
                             "rejected": _transcript(question, rejected)})
                i += 1
        random.Random(seed + 1).shuffle(rows)
        out[split] = rows
    return out


def breakdown(rows: list[dict[str, Any]]) -> str:
    """A markdown table of a compare's test answers by question kind: the share of right answers
    (mean over seeds of each seed's share) of the starting policy, the references and each
    variant. ``rows``: ``results.parquet``'s rows (prompt, reference, answer, base_answer)."""
    test = [r for r in rows if r["split"] == "test"]
    variants = list(dict.fromkeys(r["variant"] for r in test))
    kinds = list(QUESTIONS)

    def share(pick: list[dict[str, Any]], text: str) -> dict[str, float]:
        by: dict[str, dict[int, list[bool]]] = {k: {} for k in kinds}
        for r in pick:
            kind, country = ask(r["prompt"])
            by[kind].setdefault(r["seed"], []).append(right(kind, country, r[text] or ""))
        return {k: sum(sum(v) / len(v) for v in seeds.values()) / len(seeds) for k, seeds in by.items() if seeds}

    first = [r for r in test if r["variant"] == variants[0]]
    lines = ["| answers | " + " | ".join(f"{k} (n={sum(ask(r['prompt'])[0] == k for r in first) // len({r['seed'] for r in first})})"
                                         for k in kinds) + " |", "|---" * (len(kinds) + 1) + "|"]
    for label, pick, text in [("starting policy", first, "base_answer"), ("references", first, "reference"),
                              *((v, [r for r in test if r["variant"] == v], "answer") for v in variants)]:
        sh = share(pick, text)
        lines.append(f"| {label} | " + " | ".join(f"{sh[k]:.3f}" for k in kinds) + " |")
    return "\n".join(lines)


def write_files(directory: Path, seed: int = 0) -> None:
    """Regenerate data/geo-{train,validation,test}.jsonl."""
    for split, rows in make_rows(seed).items():
        (directory / f"geo-{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


if __name__ == "__main__":
    write_files(Path(__file__).resolve().parent.parent / "data")
