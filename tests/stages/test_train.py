"""Learner: exact resume after SIGKILL, baselines from the same shards, column checks."""

import json
import os

import pytest

from grao_pipe.config import load_config
from grao_pipe.errors import InputError, StageFailed
from grao_pipe.stages import generate, score, train


def _losses(directory):
    return [json.loads(x)["loss"] for x in (directory / "metrics.jsonl").read_text().splitlines()]


def _prepare(cfg):
    generate.run(cfg)
    score.run(cfg)


def test_sigkill_then_resume_gives_the_same_losses(tiny_config, tmp_path):
    sections = {"train": {"epochs": 2, "checkpoint_every": 1}}
    straight = load_config(tiny_config(**sections), [f"workdir={tmp_path / 'a'}"])
    _prepare(straight)
    ref = train.run(straight)
    expected = _losses(ref.ref.directory)
    assert len(expected) == 6

    killed = load_config(tiny_config(**sections), [f"workdir={tmp_path / 'b'}"])
    _prepare(killed)
    os.environ["GRAO_PIPE_KILL_AT_STEP"] = "4"
    try:
        with pytest.raises(StageFailed):
            train.run(killed)
    finally:
        del os.environ["GRAO_PIPE_KILL_AT_STEP"]
    out_dir = train.train_ref(killed, 1).directory
    assert len(_losses(out_dir)) >= 4 and not (out_dir / "manifest.json").exists()
    resumed = train.run(killed)
    assert _losses(resumed.ref.directory) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("objective,extra", [
    ("dpo", []),
    ("grpo", ["train.grpo_kl=0.05"]),
    ("sft", ["train.activation_checkpointing=true", "train.pack_tokens=64"]),
])
def test_baselines_train_from_the_same_shards(tiny_config, objective, extra):
    base = tiny_config(score={"reference_logprobs": True})
    cfg = load_config(base, [f"train.objective={objective}", *extra])
    _prepare(cfg)
    out = train.run(cfg)
    metrics = [json.loads(x) for x in (out.ref.directory / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 3 and all(m["real_tokens"] > 0 for m in metrics)
    key = {"dpo": "loss_dpo", "grpo": "loss_kl", "sft": "loss_nll_reference"}[objective]
    assert key in metrics[0]
    if objective == "dpo":  # before any update the policy equals the reference: loss = log 2
        assert metrics[0]["loss"] == pytest.approx(0.6931, abs=1e-3)


def test_dpo_without_reference_logprobs_fails_before_training(tiny_config):
    cfg = load_config(tiny_config(), ["train.objective=dpo"])
    _prepare(cfg)
    with pytest.raises(InputError, match=r"needs column 'ref_logprobs'.*score.reference_logprobs=true"):
        train.run(cfg)
    assert not train.train_ref(cfg, 1).directory.joinpath("metrics.jsonl").exists()


def test_gradient_accumulation_by_token_budget_matches_one_batch(tiny_config, tmp_path):
    one = load_config(tiny_config(), [f"workdir={tmp_path / 'one'}"])
    _prepare(one)
    expected = _losses(train.run(one).ref.directory)
    # ~20 tokens per micro-batch: every group is its own micro-batch, ranks get uneven counts.
    acc = load_config(tiny_config(), [f"workdir={tmp_path / 'acc'}", "train.micro_batch_tokens=20"])
    _prepare(acc)
    got = _losses(train.run(acc).ref.directory)
    assert got == pytest.approx(expected, abs=1e-5)
