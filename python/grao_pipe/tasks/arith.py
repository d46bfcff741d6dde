"""The embedded default task: single-digit addition, verifiable against the prompt itself.

Prompts look like ``"3+4="`` and references like ``"7"``. The scorer is a comparative,
reference-relative reward R(o, y) in {-1, 0, +1}: is the response better than, as good as, or
worse than the reference at being the correct sum.
"""

from __future__ import annotations

import re

_PROMPT = re.compile(r"^\s*(\d+)\s*\+\s*(\d+)\s*=\s*$")
_ANSWER = re.compile(r"\s*(\d+)")


def make_prompts(max_operand: int = 9) -> list[dict[str, str]]:
    """Every ``a+b=`` with 0 <= a, b <= max_operand (100 prompts for the default)."""
    return [
        {"prompt": f"{a}+{b}=", "reference": str(a + b)}
        for a in range(max_operand + 1)
        for b in range(max_operand + 1)
    ]


def _correct(prompt: str, answer: str) -> bool:
    m = _PROMPT.match(prompt)
    if m is None:
        raise ValueError(f"arith scorer: prompt {prompt!r} is not of the form 'a+b='")
    # The answer is the leading integer of the text (what follows it is ignored), as in
    # verifiable-reward setups that extract a final answer.
    a = _ANSWER.match(answer)
    return a is not None and int(a.group(1)) == int(m.group(1)) + int(m.group(2))


def score(prompt: str, response: str, reference: str) -> float:
    """R(o, y) = correct(o) - correct(y): +1 better than the reference, 0 tie, -1 worse."""
    return float(_correct(prompt, response)) - float(_correct(prompt, reference))
