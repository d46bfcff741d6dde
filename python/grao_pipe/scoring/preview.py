"""``grao-pipe score --sample N``: what each judge is asked and answers, before a long run.

Reads the first N rows of the round's generate output, renders each judge scorer's prompts
(both orders when ``both_orders``), asks the judge, and returns the prompts, raw answers and
parsed verdicts as text. Nothing is written or cached.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from grao_pipe.config import JudgeScorer
from grao_pipe.errors import ConfigError
from grao_pipe.scoring.base import ScoreInput

if TYPE_CHECKING:
    from grao_pipe.pipeline import Pipeline

_VERDICT_TEXT = {1: "Text 1 better", 0: "tie", -1: "Text 2 better", None: "UNPARSEABLE"}


def preview_judges(p: Pipeline, round_: int, n: int) -> str:
    judges = [s for s in p.cfg.score.scorers if isinstance(s, JudgeScorer)]
    if not judges:
        raise ConfigError("score --sample shows judge prompts and answers, and score.scorers has no judge scorer")
    gen_target = p.target("generate", round_)
    gen = gen_target.require("score --sample")
    table = gen_target.dir.open_shard(gen.shards[0], "generate").read(
        ["prompt", "prompt_messages", "response", "reference"]).slice(0, n)
    rows = ScoreInput.of(table)
    out: list[str] = []
    for cfg in judges:
        from grao_pipe.scoring.judge import Judge

        judge = Judge(cfg, p.scorer_files(cfg))
        res = judge.score(rows)
        forward, swapped = judge.prompts(rows)
        assert res.details is not None, "a judge keeps its answers"
        details = res.details.to_pylist()
        for i, d in enumerate(details):
            out.append(f"===== judge {cfg.name}, row {i + 1} of {len(details)}: R = {res.values[i].as_py()}")
            out.append(f"----- prompt (the sample as Text 1):\n{forward[i]}")
            out.append(f"----- answer: {d['answer']!r} -> {_VERDICT_TEXT[d['verdict']]}")
            if swapped is not None:
                out.append(f"----- prompt (the sample as Text 2):\n{swapped[i]}")
                out.append(f"----- answer: {d['answer_swapped']!r} -> {_VERDICT_TEXT[d['verdict_swapped']]}")
        parsed = sum(d["verdict"] is not None for d in details) + sum(
            d["verdict_swapped"] is not None for d in details if swapped is not None)
        asked = len(details) * (2 if swapped is not None else 1)
        out.append(f"===== judge {cfg.name}: {parsed} of {asked} answers parsed")
    return "\n".join(out)
