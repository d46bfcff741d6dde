"""A task whose reference answers are imperfect, for experiments where GRAO's question matters.

Prompts are two-number additions ``"a+b="`` (0 <= a, b <= 49). References are written like a
human-labelled dataset: most are correct but verbose (``"the sum is 47"``), some correct and
concise (``"47"``), some wrong. Each row also carries a ``rejected`` answer (always wrong), as
preference datasets do, for DPO on dataset pairs.

The judge is comparative and rule-based, R(o, y) in {-1, 0, +1}: the sign of
quality(o) - quality(y) with quality 0 = wrong (no integer, or the first integer is not the
sum), 1 = correct but verbose (anything besides the number), 2 = correct and concise. So a
concise correct answer beats a verbose reference (+1), a correct one beats a wrong reference
(+1), equal qualities tie (0), and a wrong answer loses to a correct reference (-1).

Splits (bundled as ``builtin:sums_<split>``, prompts disjoint across splits): ``warmup`` (SFT
of the starting policy), ``train`` (the prompts rollouts are sampled on), ``validation``
(choosing hyper-parameters), ``test`` (the reported numbers).
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

_PROMPT = re.compile(r"^\s*(\d+)\s*\+\s*(\d+)\s*=\s*$")
_INT = re.compile(r"\d+")
MAX_OPERAND = 49
SPLITS = {"warmup": 1500, "train": 500, "validation": 200, "test": 300}  # all 2500 pairs
VERBOSE = ("the sum is {}", "{} is the sum", "it is {}")
# Reference mix: correct and verbose in most rows, concise in some, wrong in the rest.
P_CORRECT_VERBOSE, P_CORRECT_CONCISE = 0.6, 0.25
SEED = 15


def _operands(prompt: str) -> tuple[int, int]:
    m = _PROMPT.match(prompt)
    if m is None:
        raise ValueError(f"sums scorer: prompt {prompt!r} is not of the form 'a+b='")
    return int(m.group(1)), int(m.group(2))


def quality(prompt: str, text: str) -> int:
    """0 wrong, 1 correct but verbose, 2 correct and concise (the first integer is the answer)."""
    a, b = _operands(prompt)
    m = _INT.search(text)
    if m is None or int(m.group(0)) != a + b:
        return 0
    return 2 if text.strip() == m.group(0) else 1


def score(prompt: str, response: str, reference: str) -> float:
    """R(o, y) = sign(quality(o) − quality(y)): +1 better than the reference, 0 tie, −1 worse."""
    d = quality(prompt, response) - quality(prompt, reference)
    return float((d > 0) - (d < 0))


def correct(prompt: str, text: str) -> bool:
    """Task success: the answer (first integer) is the sum, whatever the wording."""
    return quality(prompt, text) > 0


def _wrong(rng: random.Random, s: int) -> int:
    """A plausible wrong sum: off by a small amount or by ten (a carry error)."""
    while True:
        w = s + rng.choice([-10, -2, -1, 1, 2, 10, rng.randint(-20, 20)])
        if w != s and w >= 0:
            return w


def _render(rng: random.Random, value: int, verbose: bool) -> str:
    return rng.choice(VERBOSE).format(value) if verbose else str(value)


def make_splits(seed: int = SEED, max_operand: int = MAX_OPERAND,
                sizes: dict[str, int] | None = None) -> dict[str, list[dict[str, str]]]:
    """Deterministic rows of every split: {"prompt", "reference", "rejected"}."""
    rng = random.Random(seed)
    pairs = [(a, b) for a in range(max_operand + 1) for b in range(max_operand + 1)]
    rng.shuffle(pairs)
    out: dict[str, list[dict[str, str]]] = {}
    start = 0
    for name, n in (sizes or SPLITS).items():
        rows = []
        for a, b in pairs[start : start + n]:
            s, u = a + b, rng.random()
            if u < P_CORRECT_VERBOSE:
                ref = _render(rng, s, True)
            elif u < P_CORRECT_VERBOSE + P_CORRECT_CONCISE:
                ref = str(s)
            else:
                ref = _render(rng, _wrong(rng, s), rng.random() < 0.5)
            ref_value = int(_INT.findall(ref)[0])
            rej = _wrong(rng, s)
            while rej == ref_value:
                rej = _wrong(rng, s)
            rows.append({"prompt": f"{a}+{b}=", "reference": ref, "rejected": _render(rng, rej, rng.random() < 0.6)})
        out[name] = rows
        start += n
    return out


def write_splits(directory: Path, seed: int = SEED) -> list[Path]:
    """Write ``sums_<split>.jsonl`` files (how the bundled data was made)."""
    paths = []
    for name, rows in make_splits(seed).items():
        path = directory / f"sums_{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        paths.append(path)
    return paths
