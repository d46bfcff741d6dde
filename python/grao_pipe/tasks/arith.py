"""The embedded default task: single-digit addition, verifiable against the prompt itself.

Prompts look like ``"3+4="`` and references like ``"7"``. The scorer is a comparative,
reference-relative reward R(o, y) in {-1, 0, +1}: is the response better than, as good as, or
worse than the reference at being the correct sum. ``score_one`` is the rule for one row, its
specification; ``score`` is the same rule over a whole shard's columns, in Rust
(``rust/src/rules.rs``: one pass over the bytes, no regex engine, no Python per row).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import pyarrow as pa

from grao_pipe.scoring.base import batched

# ASCII digits, as the Rust rule reads them; operands and sums must fit in int64 there.
_PROMPT = r"^\s*([0-9]+)\s*\+\s*([0-9]+)\s*=\s*$"
_ANSWER = r"^\s*([0-9]+)"


def make_prompts(max_operand: int = 9) -> list[dict[str, str]]:
    """Every ``a+b=`` with 0 <= a, b <= max_operand (100 prompts for the default)."""
    return [
        {"prompt": f"{a}+{b}=", "reference": str(a + b)}
        for a in range(max_operand + 1)
        for b in range(max_operand + 1)
    ]


def _correct(prompt: str, answer: str) -> bool:
    m = re.match(_PROMPT, prompt)
    if m is None:
        raise ValueError(f"arith scorer: prompt {prompt!r} is not of the form 'a+b='")
    # The answer is the leading integer of the text (what follows it is ignored), as in
    # verifiable-reward setups that extract a final answer.
    a = re.match(_ANSWER, answer)
    return a is not None and int(a.group(1)) == int(m.group(1)) + int(m.group(2))


def score_one(prompt: str, response: str, reference: str) -> float:
    """R(o, y) = correct(o) - correct(y): +1 better than the reference, 0 tie, -1 worse."""
    return float(_correct(prompt, response)) - float(_correct(prompt, reference))


@batched
def score(prompts: pa.Array, responses: pa.Array, references: pa.Array) -> pa.Array:
    """``score_one`` over whole columns. A prompt not of the form 'a+b=' gives null (an invalid
    row, counted), as ``score_one``'s ValueError does; operands and sums must fit in int64."""
    from grao_pipe import _native

    return pa.array(_native.arith_rewards(prompts, responses, references))


def score_rows(prompts: Sequence[str], responses: Sequence[str], references: Sequence[str]) -> list[float | None]:
    """``score`` for Python lists (tests, small inputs)."""
    return pa.array(score(pa.array(prompts, pa.string()), pa.array(responses, pa.string()),
                          pa.array(references, pa.string()))).to_pylist()
