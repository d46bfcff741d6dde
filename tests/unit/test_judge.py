from pathlib import Path

import pytest

from grao_pipe.config import JudgeScorer
from grao_pipe.errors import ConfigError
from grao_pipe.scoring import ScorerFiles
from grao_pipe.scoring.base import ScoreInput
from grao_pipe.scoring.judge import CRITERIA, Judge, dialogue_text, load_template, parse_verdict


@pytest.mark.parametrize(
    "answer,expected",
    [
        ("1 > 2", 1),
        ("1=2", 0),
        ("1 < 2", -1),
        ("Verdict: Text 1 > Text 2.", 1),
        ("  text 1   <   text 2  ", -1),
        ("I think 2 < 1 because it is clearer", 1),  # mirrored form
        ("2 > 1", -1),
        ("Both are fine: 1 = 2", 0),
        ("1 >= 2", 1),
        ("I cannot compare these texts.", None),  # refusal
        ("", None),
        ("1 > 2, or maybe 1 < 2", None),  # contradictory
        ("1 > 2. Final answer: 1 > 2", 1),  # repeated, consistent
        ("Text 1", None),
    ],
)
def test_parse_verdict_messy_answers(answer, expected):
    assert parse_verdict(answer) == expected


def test_bundled_template_and_criteria():
    t = load_template(None)
    for field in ("[Context]", "[Text 1]", "[Text 2]", "{criterion}"):
        assert field in t
    assert set(CRITERIA) == {"helpful", "harmless"}


def test_custom_template_must_have_placeholders(tmp_path):
    p = tmp_path / "t.txt"
    p.write_text("{context} {text1}")
    with pytest.raises(ConfigError, match=r"\{text2\}"):
        load_template(p)


def test_openai_judge_needs_base_url():
    with pytest.raises(ConfigError, match="base_url"):
        Judge(JudgeScorer(model="m"), ScorerFiles())


class _Scripted(Judge):
    """The real Judge with its model answers replaced by a script (unit test of the combining)."""

    def __init__(self, answers):
        self.cfg = JudgeScorer(model="m", base_url="http://unused", both_orders=True)
        self.template, self.criterion, self.name = load_template(None), CRITERIA["helpful"], "judge"
        self._answers = list(answers)

    def _ask(self, prompts):
        out, self._answers = self._answers[: len(prompts)], self._answers[len(prompts) :]
        return out


def test_both_orders_removes_position_bias_and_counts_unparseable():
    # forward (o as Text 1): 1>2, 1>2, ??? ; swapped (y as Text 1): 1>2 (position bias), 1<2, 1=2
    j = _Scripted(["1 > 2", "1 > 2", "no idea", "1 > 2", "1 < 2", "1 = 2"])
    res = j.score(ScoreInput.from_lists(["q"] * 3, ["o1", "o2", "o3"], ["y"] * 3))
    assert res.tolist() == [0.0, 1.0, None] and res.unparseable == 1


def test_the_judge_reads_the_dialogue_not_the_policys_chat_template():
    """A chat prompt reaches the judge as plain turns, with no control tokens of any template."""
    j = _Scripted(["1 > 2", "1 > 2"])
    seen = []
    j._ask = lambda prompts: (seen.extend(prompts), ["1 > 2"] * len(prompts))[1]
    rendered = "<|im_start|>system\nYou are helpful<|im_end|>\n<|im_start|>user\nHi?<|im_end|>\n<|im_start|>assistant\n"
    rows = ScoreInput.from_lists([rendered], ["Hello!"], ["Hi there."],
                                 [[{"role": "system", "content": ""}, {"role": "user", "content": "Hi?"},
                                   {"role": "assistant", "content": "Yes?"}, {"role": "user", "content": "Hi?"}]])
    j.score(rows)
    context = seen[0].split("[Context]")[1].split("[Text 1]")[0]
    assert "<|im_start|>" not in seen[0] and context.strip() == "User: Hi?\n\nAssistant: Yes?\n\nUser: Hi?"
    assert dialogue_text([("user", "3+4=")]) == "3+4="  # a plain-text prompt is itself


def test_scorer_key_follows_the_template_content_not_its_path(tmp_path):
    from grao_pipe.scoring import scorer_files, scorer_key

    def key(cfg: JudgeScorer) -> str:
        return scorer_key(cfg, scorer_files(cfg, Path))

    template = tmp_path / "judge.txt"
    template.write_text("{context} {text1} {text2} {criterion} v1")
    cfg = JudgeScorer(model="m", template=str(template))
    before = key(cfg)
    assert key(cfg) == before
    copy = tmp_path / "elsewhere.txt"
    copy.write_text(template.read_text())
    assert key(JudgeScorer(model="m", template=str(copy))) == before  # same content, other path
    template.write_text("{context} {text1} {text2} {criterion} v2, edited in place")
    assert key(cfg) != before  # cached rewards of the old template are not reused
    assert key(JudgeScorer(model="m")) != before
    assert key(JudgeScorer(model="m", base_url="http://a/v1")) == key(JudgeScorer(model="m", base_url="http://b/v1"))
