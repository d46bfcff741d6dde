"""The embedded default task: single-digit addition, verifiable against the prompt itself.

Prompts look like ``"3+4="`` and references like ``"7"``. The scorer is a comparative,
reference-relative reward R(o, y) in {-1, 0, +1}: is the response better than, as good as, or
worse than the reference at being the correct sum. ``score`` is vectorised (Polars expressions
over a whole shard's columns); ``score_one`` is the same rule for one row, its reference.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import polars as pl
import pyarrow as pa

from grao_pipe.scoring.base import batched

# ASCII digits, as the vectorised rule reads them; operands and sums must fit in int64.
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


def _correct_col(answer: str) -> pl.Expr:
    value = pl.col(answer).str.extract(_ANSWER, 1).cast(pl.Int64, strict=False)
    return (value == pl.col("_sum")).fill_null(False).cast(pl.Float64)


@batched
def score(prompts: pa.Array, responses: pa.Array, references: pa.Array) -> pa.Array:
    """``score_one`` over whole columns (one regex pass over each column). A prompt not of the
    form 'a+b=' gives null (an invalid row, counted), as ``score_one``'s ValueError does."""
    df = pl.DataFrame({"prompt": prompts, "response": responses, "reference": references})
    ops = pl.col("prompt").str.extract_groups(_PROMPT)
    out = (df.with_columns(_a=ops.struct.field("1").cast(pl.Int64, strict=False),
                           _b=ops.struct.field("2").cast(pl.Int64, strict=False))
           .with_columns(_sum=pl.col("_a") + pl.col("_b"))
           .select(pl.when(pl.col("_sum").is_not_null()).then(_correct_col("response") - _correct_col("reference")).alias("r")))
    return out.to_series().to_arrow()


def score_rows(prompts: Sequence[str], responses: Sequence[str], references: Sequence[str]) -> list[float | None]:
    """``score`` for Python lists (tests, small inputs)."""
    return pa.array(score(pa.array(prompts, pa.string()), pa.array(responses, pa.string()),
                          pa.array(references, pa.string()))).to_pylist()
