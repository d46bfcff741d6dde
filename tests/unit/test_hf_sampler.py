"""The hf backend's stored behaviour log-probs: equal to a fresh forward pass, and computed
without keeping every step's full-vocabulary logits."""

from __future__ import annotations

import pytest
import torch

from grao_pipe.config import GenerateConfig
from grao_pipe.generation import Request
from grao_pipe.generation.hf import HFSampler
from grao_pipe.generation.tokenizer import PolicyTokenizer
from grao_pipe.prompts import Prompt


def _requests(tok: PolicyTokenizer) -> list[Request]:
    # Different lengths, so the batch is left-padded; one chat prompt, two plain ones.
    prompts = [Prompt(0, "3+4=", None, "7"), Prompt(1, None, (("user", "12+9="),), "21"),
               Prompt(2, "1+1+1+1+1=", None, "5")]
    return [Request(p, tok.render(p), tok.encode(tok.render(p))) for p in prompts]


def _fresh_logps(model: torch.nn.Module, prompt: list[int], response: list[int]) -> list[float]:
    """log πθ(response_t | prompt, response_<t) from one unpadded teacher-forced forward."""
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1].float()
    return torch.log_softmax(logits, -1).gather(1, torch.tensor(response)[:, None])[:, 0].tolist()


@pytest.mark.parametrize("model_defaults", [{}, {"repetition_penalty": 1.5, "min_new_tokens": 4}])
def test_behaviour_logprobs_equal_a_fresh_forward(tiny_model_dir, model_defaults):
    """Also when the model's generation config adds logits processors: stored log-probs are the
    raw policy's, as the learner computes them."""
    tok = PolicyTokenizer(tiny_model_dir)
    sampler = HFSampler(tiny_model_dir, GenerateConfig(num_samples=3, max_new_tokens=6, temperature=0.7), tok)
    for k, v in model_defaults.items():
        setattr(sampler.model.generation_config, k, v)
    requests = _requests(tok)
    groups = sampler.sample(requests, seed=0)
    checked = 0
    for r, group in zip(requests, groups, strict=True):
        assert len(group) == 3
        for s in group:
            assert s.logprobs is not None and len(s.logprobs) == len(s.token_ids) > 0
            fresh = _fresh_logps(sampler.model, r.token_ids, s.token_ids)
            assert max(abs(a - b) for a, b in zip(s.logprobs, fresh, strict=True)) < 1e-4
            checked += len(fresh)
    assert checked >= 9


def test_generate_keeps_no_per_step_logits(tiny_model_dir, monkeypatch):
    """output_logits/output_scores would keep [steps, N, V] until generate returns."""
    tok = PolicyTokenizer(tiny_model_dir)
    sampler = HFSampler(tiny_model_dir, GenerateConfig(num_samples=2, max_new_tokens=4), tok)
    calls: list[dict] = []
    real = sampler.model.generate

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        calls.append({"kwargs": kwargs, "out": out})
        return out

    monkeypatch.setattr(sampler.model, "generate", spy)
    groups = sampler.sample(_requests(tok), seed=1)
    assert [len(g) for g in groups] == [2, 2, 2]
    (call,) = calls
    assert not call["kwargs"].get("output_logits") and not call["kwargs"].get("output_scores")
    assert getattr(call["out"], "logits", None) is None and getattr(call["out"], "scores", None) is None


def test_same_seed_same_samples(tiny_model_dir):
    tok = PolicyTokenizer(tiny_model_dir)
    sampler = HFSampler(tiny_model_dir, GenerateConfig(num_samples=2, max_new_tokens=5), tok)
    a, b = sampler.sample(_requests(tok), seed=7), sampler.sample(_requests(tok), seed=7)
    assert [[s.token_ids for s in g] for g in a] == [[s.token_ids for s in g] for g in b]
    assert [[s.logprobs for s in g] for g in a] == [[s.logprobs for s in g] for g in b]
