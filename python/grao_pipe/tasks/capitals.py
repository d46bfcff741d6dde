"""A verifiable chat task for real pretrained models: name a country's capital.

Prompts are HH-format transcripts (``\\n\\nHuman: What is the capital of Peru?\\n\\nAssistant:
The capital of Peru is Lima.``) with chosen/rejected answers, shipped as
``builtin:capitals-train`` and held-out ``builtin:capitals-eval`` (countries never seen in
training). SmolLM2-135M-Instruct names the right capital in about a third to two fifths of its
answers (measured: docs/design-decisions.md), and often answers with something else entirely
("Botswana is a country located in ..."), so there is room to learn.

The scorer is comparative and reference-relative, R(o, y) = right(o) - right(y) in {-1, 0, +1},
with "right" checked against the country's true capital, never against the reference, which is
wrong in one row of five (so +1 happens too): an answer is right when it names the capital
(or an accepted spelling) and no other city of the table before it.
"""

from __future__ import annotations

import json
import random
import re
import unicodedata
from pathlib import Path

QUESTION = "What is the capital of {country}?"
_ASKED = re.compile(r"What is the capital of (.+?)\?")

# country -> (capital, accepted spellings, a plausible wrong answer). Only countries whose
# capital is not disputed and is not spelt like the country itself.
CAPITALS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "France": ("Paris", (), "Lyon"),
    "Germany": ("Berlin", (), "Munich"),
    "Italy": ("Rome", ("Roma",), "Milan"),
    "Spain": ("Madrid", (), "Barcelona"),
    "Portugal": ("Lisbon", ("Lisboa",), "Porto"),
    "the United Kingdom": ("London", (), "Manchester"),
    "Ireland": ("Dublin", (), "Galway"),
    "Belgium": ("Brussels", ("Bruxelles",), "Antwerp"),
    "Austria": ("Vienna", ("Wien",), "Salzburg"),
    "Poland": ("Warsaw", ("Warszawa",), "Krakow"),
    "the Czech Republic": ("Prague", ("Praha",), "Brno"),
    "Slovakia": ("Bratislava", (), "Kosice"),
    "Hungary": ("Budapest", (), "Debrecen"),
    "Romania": ("Bucharest", ("Bucuresti",), "Cluj-Napoca"),
    "Bulgaria": ("Sofia", (), "Plovdiv"),
    "Greece": ("Athens", ("Athina",), "Thessaloniki"),
    "Serbia": ("Belgrade", ("Beograd",), "Novi Sad"),
    "Croatia": ("Zagreb", (), "Rijeka"),
    "Slovenia": ("Ljubljana", (), "Maribor"),
    "Norway": ("Oslo", (), "Bergen"),
    "Sweden": ("Stockholm", (), "Gothenburg"),
    "Finland": ("Helsinki", (), "Turku"),
    "Denmark": ("Copenhagen", ("Kobenhavn",), "Aarhus"),
    "Iceland": ("Reykjavik", (), "Akureyri"),
    "Estonia": ("Tallinn", (), "Tartu"),
    "Latvia": ("Riga", (), "Daugavpils"),
    "Lithuania": ("Vilnius", (), "Kaunas"),
    "Ukraine": ("Kyiv", ("Kiev",), "Odesa"),
    "Belarus": ("Minsk", (), "Gomel"),
    "Russia": ("Moscow", ("Moskva",), "Saint Petersburg"),
    "Albania": ("Tirana", ("Tirane",), "Durres"),
    "North Macedonia": ("Skopje", (), "Ohrid"),
    "Montenegro": ("Podgorica", (), "Budva"),
    "Bosnia and Herzegovina": ("Sarajevo", (), "Mostar"),
    "Moldova": ("Chisinau", (), "Tiraspol"),
    "Malta": ("Valletta", (), "Sliema"),
    "Cyprus": ("Nicosia", (), "Limassol"),
    "Japan": ("Tokyo", (), "Osaka"),
    "China": ("Beijing", ("Peking",), "Shanghai"),
    "South Korea": ("Seoul", (), "Busan"),
    "North Korea": ("Pyongyang", (), "Hamhung"),
    "India": ("New Delhi", ("Delhi",), "Mumbai"),
    "Pakistan": ("Islamabad", (), "Karachi"),
    "Bangladesh": ("Dhaka", ("Dacca",), "Chittagong"),
    "Nepal": ("Kathmandu", (), "Pokhara"),
    "Thailand": ("Bangkok", (), "Chiang Mai"),
    "Vietnam": ("Hanoi", ("Ha Noi",), "Ho Chi Minh City"),
    "Cambodia": ("Phnom Penh", (), "Siem Reap"),
    "Laos": ("Vientiane", (), "Luang Prabang"),
    "the Philippines": ("Manila", (), "Cebu"),
    "Malaysia": ("Kuala Lumpur", (), "Penang"),
    "Mongolia": ("Ulaanbaatar", ("Ulan Bator",), "Erdenet"),
    "Afghanistan": ("Kabul", (), "Kandahar"),
    "Iran": ("Tehran", ("Teheran",), "Isfahan"),
    "Iraq": ("Baghdad", (), "Basra"),
    "Saudi Arabia": ("Riyadh", (), "Jeddah"),
    "Syria": ("Damascus", (), "Aleppo"),
    "Jordan": ("Amman", (), "Aqaba"),
    "Lebanon": ("Beirut", (), "Tripoli"),
    "Qatar": ("Doha", (), "Al Wakrah"),
    "Oman": ("Muscat", (), "Salalah"),
    "the United Arab Emirates": ("Abu Dhabi", (), "Dubai"),
    "Turkey": ("Ankara", (), "Istanbul"),
    "Kazakhstan": ("Astana", (), "Almaty"),
    "Uzbekistan": ("Tashkent", (), "Samarkand"),
    "Turkmenistan": ("Ashgabat", (), "Turkmenabat"),
    "Kyrgyzstan": ("Bishkek", (), "Osh"),
    "Tajikistan": ("Dushanbe", (), "Khujand"),
    "Armenia": ("Yerevan", (), "Gyumri"),
    "Azerbaijan": ("Baku", (), "Ganja"),
    "Bhutan": ("Thimphu", (), "Paro"),
    "Egypt": ("Cairo", (), "Alexandria"),
    "Kenya": ("Nairobi", (), "Mombasa"),
    "Ethiopia": ("Addis Ababa", (), "Dire Dawa"),
    "Nigeria": ("Abuja", (), "Lagos"),
    "Ghana": ("Accra", (), "Kumasi"),
    "Morocco": ("Rabat", (), "Casablanca"),
    "Algeria": ("Algiers", (), "Oran"),
    "Tunisia": ("Tunis", (), "Sfax"),
    "Sudan": ("Khartoum", (), "Omdurman"),
    "Senegal": ("Dakar", (), "Saint-Louis"),
    "Mali": ("Bamako", (), "Timbuktu"),
    "Uganda": ("Kampala", (), "Entebbe"),
    "Rwanda": ("Kigali", (), "Butare"),
    "Zimbabwe": ("Harare", (), "Bulawayo"),
    "Zambia": ("Lusaka", (), "Ndola"),
    "Angola": ("Luanda", (), "Huambo"),
    "Mozambique": ("Maputo", (), "Beira"),
    "Madagascar": ("Antananarivo", (), "Toamasina"),
    "Namibia": ("Windhoek", (), "Walvis Bay"),
    "Botswana": ("Gaborone", (), "Francistown"),
    "Cameroon": ("Yaounde", (), "Douala"),
    "Somalia": ("Mogadishu", (), "Hargeisa"),
    "Niger": ("Niamey", (), "Zinder"),
    "Sierra Leone": ("Freetown", (), "Kenema"),
    "Liberia": ("Monrovia", (), "Gbarnga"),
    "Burkina Faso": ("Ouagadougou", (), "Bobo-Dioulasso"),
    "Malawi": ("Lilongwe", (), "Blantyre"),
    "Gabon": ("Libreville", (), "Port-Gentil"),
    "Eritrea": ("Asmara", (), "Massawa"),
    "the United States": ("Washington", ("Washington, D.C.",), "New York"),
    "Canada": ("Ottawa", (), "Toronto"),
    "Mexico": ("Mexico City", (), "Guadalajara"),
    "Brazil": ("Brasilia", (), "Rio de Janeiro"),
    "Argentina": ("Buenos Aires", (), "Cordoba"),
    "Chile": ("Santiago", (), "Valparaiso"),
    "Peru": ("Lima", (), "Cusco"),
    "Colombia": ("Bogota", (), "Medellin"),
    "Venezuela": ("Caracas", (), "Maracaibo"),
    "Ecuador": ("Quito", (), "Guayaquil"),
    "Uruguay": ("Montevideo", (), "Punta del Este"),
    "Paraguay": ("Asuncion", (), "Ciudad del Este"),
    "Cuba": ("Havana", ("La Habana",), "Santiago de Cuba"),
    "Jamaica": ("Kingston", (), "Montego Bay"),
    "Haiti": ("Port-au-Prince", (), "Cap-Haitien"),
    "the Dominican Republic": ("Santo Domingo", (), "Punta Cana"),
    "Honduras": ("Tegucigalpa", (), "San Pedro Sula"),
    "Nicaragua": ("Managua", (), "Granada"),
    "Costa Rica": ("San Jose", (), "Limon"),
    "El Salvador": ("San Salvador", (), "Santa Ana"),
    "Australia": ("Canberra", (), "Sydney"),
    "New Zealand": ("Wellington", (), "Auckland"),
    "Fiji": ("Suva", (), "Nadi"),
    "Papua New Guinea": ("Port Moresby", (), "Lae"),
}
EVAL_SHARE = 0.3  # of the countries, held out for eval


def _fold(text: str) -> str:
    """Lower case without accents, so "Brasília" and "Bogotá" match their plain spellings."""
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c)).lower()


def _pattern(names: tuple[str, ...]) -> re.Pattern[str]:
    return re.compile(r"(?<![a-z])(?:" + "|".join(re.escape(_fold(n)) for n in names) + r")(?![a-z])")


_RIGHT = {c: _pattern((cap, *alts)) for c, (cap, alts, _) in CAPITALS.items()}
# Any city of the table (capitals and wrong answers): naming one before the right capital is wrong.
_ANY_CITY = _pattern(tuple({n for cap, alts, wrong in CAPITALS.values() for n in (cap, *alts, wrong)}))


def country_of(prompt: str) -> str:
    """The country a prompt asks about (the prompt may be rendered with any chat template)."""
    m = _ASKED.search(prompt)
    if m is None or m.group(1) not in CAPITALS:
        raise ValueError(f"capitals scorer: no known 'What is the capital of ...?' question in {prompt[-200:]!r}")
    return m.group(1)


def right(country: str, answer: str) -> bool:
    """Does ``answer`` name the country's capital (and no other city of the table before it)?"""
    return named_first(_fold(answer), _RIGHT[country], _ANY_CITY)


def named_first(text: str, right: re.Pattern[str], any_named: re.Pattern[str]) -> bool:
    """``right`` is named in ``text``, and no other name of its kind before it ("Sydney, not
    Canberra" is a wrong answer)."""
    found = right.search(text)
    if found is None:
        return False
    first = any_named.search(text)
    return first is None or first.start() >= found.start() or right.match(text, first.start()) is not None


def score(prompt: str, response: str, reference: str) -> float:
    """R(o, y) = right(o) - right(y): +1 better than the reference, 0 as good, -1 worse."""
    country = country_of(prompt)
    return float(right(country, response)) - float(right(country, reference))


def _transcript(question: str, answer: str) -> str:
    return f"\n\nHuman: {question}\n\nAssistant: {answer}"


def make_rows(seed: int = 0) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """(train rows, eval rows) in HH format. References (chosen) are "The capital of X is Y."
    in 3 of 5 rows, a right but verbose sentence in 1 of 5, a wrong city in 1 of 5; rejected
    answers are always a wrong city. (Bare city names as references taught SmolLM2 to answer
    with a bare name, often the country's own: docs/design-decisions.md.)"""
    countries = sorted(CAPITALS)
    random.Random(seed).shuffle(countries)
    rows = []
    for i, country in enumerate(countries):
        capital, _, wrong = CAPITALS[country]
        question = QUESTION.format(country=country)
        plain = f"The capital of {country} is {capital}."
        verbose = f"{country[0].upper()}{country[1:]} has {capital} as its capital city, and {wrong} is another of its cities."
        chosen = {0: plain, 1: plain, 2: plain, 3: verbose, 4: f"The capital of {country} is {wrong}."}[i % 5]
        rejected = wrong if i % 5 == 4 else f"The capital of {country} is {wrong}."
        rows.append({"chosen": _transcript(question, chosen), "rejected": _transcript(question, rejected)})
    n_eval = round(len(rows) * EVAL_SHARE)
    return rows[n_eval:], rows[:n_eval]


def write_files(directory: Path, seed: int = 0) -> None:
    """Regenerate data/capitals-train.jsonl and data/capitals-eval.jsonl."""
    train, held_out = make_rows(seed)
    for name, rows in (("capitals-train", train), ("capitals-eval", held_out)):
        (directory / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


if __name__ == "__main__":
    write_files(Path(__file__).resolve().parent.parent / "data")
