"""The `sums` task: imperfect references, a comparative judge where +1, 0 and −1 all occur,
disjoint bundled splits that the generator reproduces."""

import json
from importlib import resources
from pathlib import Path

import pytest

from grao_pipe.tasks import sums


@pytest.mark.parametrize("response,reference,expected", [
    ("47", "the sum is 47", 1.0),  # concise and correct beats a verbose reference
    ("47", "45", 1.0),  # correct beats a wrong reference
    ("it is 47", "the sum is 47", 0.0),  # both correct and verbose
    ("46", "the sum is 44", 0.0),  # both wrong
    ("the sum is 47", "47", -1.0),  # verbose loses to concise
    ("48", "47 is the sum", -1.0),  # wrong loses to correct
    ("", "47", -1.0),  # no answer is wrong
    (" 47 ", "thesumis47", 1.0),  # surrounding whitespace is still concise; the tiny tokenizer drops spaces
])
def test_judge_hand_cases(response, reference, expected):
    assert sums.score("12+35=", response, reference) == expected


def test_bundled_splits_are_the_generator_output_and_disjoint():
    made = sums.make_splits()
    prompts = []
    for name, n in sums.SPLITS.items():
        path = Path(str(resources.files("grao_pipe") / "data" / f"sums_{name}.jsonl"))
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        assert rows == made[name] and len(rows) == n
        prompts += [r["prompt"] for r in rows]
    assert len(prompts) == len(set(prompts))


def test_references_are_imperfect_and_rejected_answers_wrong():
    rows = [r for split in sums.make_splits().values() for r in split]
    q = [sums.quality(r["prompt"], r["reference"]) for r in rows]
    shares = [q.count(k) / len(q) for k in (0, 1, 2)]
    assert shares == pytest.approx([0.15, 0.6, 0.25], abs=0.03)  # wrong, verbose, concise
    assert all(sums.quality(r["prompt"], r["rejected"]) == 0 for r in rows)


def test_warmup_trains_once_and_lowers_the_reference_nll(tmp_path):
    from grao_pipe.config import TinyModelConfig
    from grao_pipe.models.tiny import build_tiny_model
    from grao_pipe.tasks.warmup import WarmupConfig, sft_warmup

    rows = sums.make_splits()["warmup"][:200]
    base = build_tiny_model(TinyModelConfig(), [t for r in rows for t in (r["prompt"], r["reference"])], tmp_path)
    cfg = WarmupConfig(steps=40, batch_size=16, lr=3e-3, warmup_steps=5)
    out = sft_warmup(base, rows, tmp_path, cfg)
    loss = json.loads((out / "warmup.json").read_text())["loss"]
    assert len(loss) == 40 and sum(loss[-5:]) < 0.7 * sum(loss[:5])
    stamp = (out / "warmup.json").stat().st_mtime_ns
    assert sft_warmup(base, rows, tmp_path, cfg) == out and (out / "warmup.json").stat().st_mtime_ns == stamp
