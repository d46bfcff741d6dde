"""Our DPO and GRPO losses against TRL 1.16 (the field's implementation) on fixed ragged float64
inputs, from tests/data/trl_golden.json (written by tests/oracle/make_trl_golden.py with TRL
installed; this test needs no TRL). Intended differences (docs/design-decisions.md, "Differences
from TRL") are asserted as differences."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow as pa
import pytest
import torch

from grao_pipe import advantages, losses
from grao_pipe.config import AdvantageConfig

GOLDEN = json.loads((Path(__file__).resolve().parents[1] / "data" / "trl_golden.json").read_text())
TOL = 1e-12


def t(x: list) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


def test_dpo_matches_trl_sigmoid_loss_and_gradient():
    case = GOLDEN["dpo"]
    n, mask = case["n_pairs"], t(case["mask"])
    leaf = t(case["policy_logps"]).requires_grad_(True)
    sums, ref = (leaf * mask).sum(1), (t(case["ref_logps"]) * mask).sum(1)
    loss_B, _ = losses.dpo_loss(sums[:n], sums[n:], ref[:n], ref[n:], beta=case["beta"])
    # TRL averages over pairs; our objective averages over groups (those without a pair count 0),
    # here one pair per group, so the two agree.
    loss = loss_B.mean()
    loss.backward()
    assert loss.dtype == torch.float64
    assert loss.item() == pytest.approx(case["loss"], abs=TOL, rel=TOL)
    assert torch.allclose(leaf.grad, t(case["grad"]), atol=TOL, rtol=0)


@pytest.mark.parametrize("index", range(len(GOLDEN["grpo"])))
def test_grpo_matches_trl_grpo_loss_and_gradient(index):
    case = GOLDEN["grpo"][index]
    g, mask = case["group_size"], t(case["mask"])
    n = mask.shape[0]
    leaf = t(case["policy_logps"]).requires_grad_(True)
    group_of = torch.arange(n) // g
    loss_B, _ = losses.grpo_loss(leaf, t(case["old_logps"]), t(case["ref_logps"]), t(case["advantages"]), mask,
                                 group_of, n // g, clip_eps=case["clip"], kl_coef=case["beta"])
    # TRL's loss_type="grpo" averages over sequences; ours over groups of equal size G: the same mean.
    loss = loss_B.mean()
    loss.backward()
    assert loss.dtype == torch.float64
    same_loss = math.isclose(loss.item(), case["loss"], abs_tol=TOL, rel_tol=TOL)
    same_grad = torch.allclose(leaf.grad, t(case["grad"]), atol=TOL, rtol=0)
    if case["bias_correction_kl"] and case["beta"] > 0:
        # TRL's default multiplies the k3 KL by π/π_old (use_bias_correction_kl); ours does not.
        assert not same_loss and not same_grad
    else:
        assert same_loss, (loss.item(), case["loss"])
        assert same_grad, (leaf.grad - t(case["grad"])).abs().max().item()


def test_group_advantages_differ_from_trl_by_the_sample_std_factor():
    """TRL: (r − mean) / (sample std + 1e-4); ours (samples_only): (r − mean) / (population std +
    1e-6). With spread rewards the ratio is √(G/(G−1)) (1.069 at G = 8) up to the ε terms."""
    case = GOLDEN["advantages"]
    g, rewards = case["group_size"], case["rewards"]
    ids = [str(i // g) for i in range(len(rewards))]
    ours = advantages.compute(pa.array(ids), pa.array(rewards, pa.float64()), AdvantageConfig(mode="samples_only"))
    factor = math.sqrt(g / (g - 1))
    for a, b in zip(ours.advantage.to_pylist(), case["advantages"], strict=True):
        assert a == pytest.approx(factor * b, rel=2e-4, abs=1e-9)
