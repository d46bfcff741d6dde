"""Token-level GRPO (TRL's loss_type dapo / dr_grpo) against its formulas, written out per token.

The same stand-in log-prob model as test_objectives: a table of log-probs with gradients.
"""

import math

import pytest
from table_logps import TableLogps

torch = pytest.importorskip("torch")

from grao_pipe.config import TrainConfig  # noqa: E402
from grao_pipe.errors import ConfigError  # noqa: E402
from grao_pipe.learner.data import Group, collate  # noqa: E402
from grao_pipe.learner.step import StepTotals, sample_counts, step_loss  # noqa: E402

CPU = torch.device("cpu")


def _groups(seed=0, behaviour=True):
    """Ragged groups: 2-3 samples of 1-5 tokens, behaviour log-probs and advantages at random
    (``behaviour=False``: none, so the ratio is taken against stop_grad(πθ) and is 1)."""
    gen = torch.Generator().manual_seed(seed)
    groups = []
    for k, g in enumerate((3, 2, 3)):
        lens = torch.randint(1, 6, (g,), generator=gen).tolist()
        responses = [list(range(1, n + 1)) for n in lens]
        old = [(-torch.rand(n, generator=gen) - 0.1).tolist() for n in lens]
        adv = torch.randn(g, generator=gen).tolist()
        groups.append(Group(f"g{k}", [5, 6], [7], 0.0, None, responses=responses, advantages=adv,
                            rewards=[0.0] * g, behaviour=old if behaviour else [None] * g, ref=[None] * g))
    return groups


def _table(batch, seed=1):
    return -torch.rand(batch.input_ids_NT.shape[0], batch.input_ids_NT.shape[1] - 1,
                       generator=torch.Generator().manual_seed(seed), dtype=torch.float64) - 0.05


def _formula(groups, table, batch, loss_type, eps_low, eps_high, length):
    """DAPO: Σ_i Σ_t ℓ_i,t / Σ_i |o_i|; Dr. GRPO: Σ_i Σ_t ℓ_i,t / (N·L); one term per token."""
    total, tokens, samples = 0.0, 0, 0
    g_max = batch.mask_BG.shape[1]
    p = len(groups[0].prompt)
    for b, grp in enumerate(groups):
        for i, resp in enumerate(grp.responses):
            row = b * g_max + i
            samples += 1
            for t in range(len(resp)):
                logp, old = table[row, p - 1 + t], grp.behaviour[i][t]
                r = torch.exp(logp - old)
                a = grp.advantages[i]
                total = total - torch.minimum(r * a, r.clamp(1 - eps_low, 1 + eps_high) * a)
                tokens += 1
    return total / (tokens if loss_type == "dapo" else samples * length)


def _cfg(loss_type, **kw):
    extra = {"max_completion_tokens": 8} if loss_type == "dr_grpo" else {}
    return TrainConfig(objective="token_grpo", token_grpo={"loss_type": loss_type, **extra, **kw})


@pytest.mark.parametrize("loss_type", ["dapo", "dr_grpo"])
def test_loss_and_gradient_equal_the_per_token_formula(loss_type):
    groups = _groups()
    batch = collate(groups, pad_id=0)
    model = TableLogps(_table(batch))
    cfg = _cfg(loss_type, clip=0.2, clip_high=0.28)
    loss_B, terms, _ = step_loss(model, batch, cfg, CPU)
    loss = loss_B.sum() / len(groups)  # what the recipe optimises: the mean over the step's groups
    loss.backward()
    table = model.table.detach().clone().requires_grad_(True)
    expected = _formula(groups, table, batch, loss_type, 0.2, 0.28, 8)
    expected.backward()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-12, abs=1e-14)
    assert torch.allclose(model.table.grad, table.grad, rtol=1e-12, atol=1e-14)
    assert torch.allclose(terms["policy"], loss_B) and not bool(terms["kl"].any())


@pytest.mark.parametrize("loss_type", ["dapo", "dr_grpo"])
def test_micro_batches_of_a_step_sum_to_the_whole_step(loss_type):
    """The normaliser is the step's (StepTotals), so splitting a step into micro-batches (or
    ranks) gives the same loss and gradient as one batch."""
    groups = _groups(seed=3, behaviour=False)
    whole = collate(groups, pad_id=0)
    parts = [collate(groups[:1], pad_id=0), collate(groups[1:], pad_id=0)]
    counts = [sample_counts(b) for b in parts]
    totals = StepTotals(groups=3, samples=sum(c[0] for c in counts), sample_tokens=sum(c[1] for c in counts))
    assert (totals.samples, totals.sample_tokens) == sample_counts(whole)
    cfg = _cfg(loss_type, clip=None)
    grads, losses = [], []
    for batch in (whole, *parts):
        # Unclipped, ratio 1: gradient −Â_i/normaliser on every token, whatever its length.
        lp = torch.zeros(batch.input_ids_NT.shape[0], batch.input_ids_NT.shape[1] - 1, dtype=torch.float64)
        model = TableLogps(lp)
        loss_B, _, _ = step_loss(model, batch, cfg, CPU, totals=totals)
        (loss_B.sum() / totals.groups).backward()
        losses.append(float(loss_B.detach().sum() / totals.groups))
        grads.append(model.table.grad)
    assert losses[0] == pytest.approx(losses[1] + losses[2], abs=1e-12)
    norm = totals.sample_tokens if loss_type == "dapo" else totals.samples * 8
    first = groups[0]
    for i, resp in enumerate(first.responses):  # group 0's tokens, in its own micro-batch
        got = grads[1][i, 1 : 1 + len(resp)]
        assert torch.allclose(got, torch.full_like(got, -first.advantages[i] / norm), atol=1e-15)


def test_token_level_weighs_tokens_equally_where_grpo_weighs_sequences():
    """One group, a 1-token and a 4-token sample with the same Â: per-token gradients are equal
    under DAPO and 4x apart under GRPO's per-sequence mean (its length bias)."""
    grp = Group("g", [5, 6], [7], 0.0, None, responses=[[1], [1, 2, 3, 4]], advantages=[1.0, 1.0],
                rewards=[0.0, 0.0], behaviour=[None, None], ref=[None, None])
    batch = collate([grp], pad_id=0)
    per_token = {}
    for cfg in (_cfg("dapo", clip=None), TrainConfig(objective="grpo", grpo={"clip": None})):
        model = TableLogps(torch.zeros(batch.input_ids_NT.shape[0], batch.input_ids_NT.shape[1] - 1))
        step_loss(model, batch, cfg, CPU)[0].sum().backward()
        per_token[cfg.objective] = (model.table.grad[0, 1].item(), model.table.grad[1, 1].item())
    short, long_ = per_token["token_grpo"]
    assert short == pytest.approx(long_) == pytest.approx(-1 / 5)
    short, long_ = per_token["grpo"]
    assert short == pytest.approx(4 * long_) and math.isclose(short, -1 / 2, rel_tol=1e-6)


def test_settings_are_checked_and_declared():
    from grao_pipe.config import load_config

    with pytest.raises(ConfigError, match="max_completion_tokens"):
        load_config(None, ["train.objective=token_grpo", "train.token_grpo.loss_type=dr_grpo"])
    needs = _cfg("dapo", kl=0.1).configured.needs
    assert needs.advantage_mode == "samples_only" and needs.reference_logprobs and needs.group_relative
    assert set(needs.columns) == {"behaviour_logprobs", "ref_logprobs"}
