"""The per-step objectives on hand-made batches: what each baseline's gradient is, token by token.

A stand-in log-prob model (a table of log-probs with gradients) makes every gradient hand-checkable.
"""

import pytest
from table_logps import TableLogps

torch = pytest.importorskip("torch")

from grao_pipe.config import TrainConfig  # noqa: E402
from grao_pipe.learner.data import Group, collate  # noqa: E402
from grao_pipe.learner.step import step_loss  # noqa: E402

CPU = torch.device("cpu")


def _group(responses, rewards, behaviour=None, ref=None, prompt=(5, 6), reference=(7, 8), rejected=None,
           advantages=None):
    g = len(responses)
    extra = {"rejected": list(rejected)} if rejected else {}
    return Group("g", list(prompt), list(reference), 0.0, None, responses=[list(r) for r in responses],
                 advantages=list(advantages or [0.0] * g), rewards=list(rewards), behaviour=behaviour or [None] * g,
                 ref=ref or [None] * g, **extra)


def test_grpo_without_clipping_or_behaviour_logprobs_has_the_policy_gradient():
    """Unclipped GRPO without behaviour log-probs: ratio exp(logπ − stop_grad(logπ)) = 1, so
    d loss / d logπ_t = −Â_i / (G·|o_i|) on every token, whatever the token's probability."""
    adv = 1.0 / (1.0 + 1e-6)  # samples-only advantages of rewards ±1 (σ = 1, ε = 1e-6), as score computes them
    batch = collate([_group([[1, 2], [3, 4]], [1.0, -1.0], advantages=[adv, -adv])], pad_id=0)
    table = torch.zeros(batch.input_ids_NT.shape[0], batch.input_ids_NT.shape[1] - 1)
    table[0, 1:3] = torch.log(torch.tensor([0.1, 0.9]))  # probabilities must not scale the gradient
    table[1, 1:3] = torch.log(torch.tensor([0.5, 0.5]))
    model = TableLogps(table)
    loss_B, _, _ = step_loss(model, batch, TrainConfig(objective="grpo", grpo={"clip": None}), CPU)
    loss_B.sum().backward()
    assert model.table.grad[0, 1:3].tolist() == pytest.approx([-adv / 4] * 2, abs=1e-6)
    assert model.table.grad[1, 1:3].tolist() == pytest.approx([adv / 4] * 2, abs=1e-6)
    assert loss_B.item() == pytest.approx(0.0, abs=1e-6)  # ratio 1: (1/G)Σ −Â_i = 0


def _needs(**train):
    return TrainConfig(**train).configured.needs


def test_unclipped_grpo_is_allowed_without_behaviour_logprobs_and_the_hint_says_what_it_means():
    assert "behaviour_logprobs" not in _needs(objective="grpo", grpo={"clip": None}).columns
    hint = _needs(objective="grpo").columns["behaviour_logprobs"]
    assert "train.grpo.clip=null" in hint and "on-policy" in hint
    needs = _needs(objective="grpo", grpo={"kl": 0.1, "clip": None})
    assert set(needs.columns) == {"ref_logprobs"} and "re-run score" in needs.columns["ref_logprobs"]
    assert needs.reference_logprobs and needs.advantage_mode == "samples_only" and needs.min_group_size == 2


def _table_for(batch):
    return torch.zeros(batch.input_ids_NT.shape[0], batch.input_ids_NT.shape[1] - 1)


def test_dpo_on_dataset_pairs_uses_the_rejected_answer():
    """chosen = the reference, rejected = the dataset's rejected answer (Rafailov et al. Eq. 7)."""
    grp = _group([[1, 2]], [1.0], rejected=[9, 8, 3])  # the sample beat y: irrelevant for dataset pairs
    grp.ref_reference, grp.ref_rejected = [-1.0, -1.0], [-0.5, -0.5, -0.5]
    batch = collate([grp], pad_id=0)
    assert batch.has_rejected_rows and batch.input_ids_NT.shape[0] == 3
    table = _table_for(batch)
    table[1, 1:3] = -1.5  # reference: log π − log π_ref = −1
    table[2, 1:4] = -0.5  # rejected: at the reference model's log-probs
    model = TableLogps(table)
    loss_B, _, diag = step_loss(model, batch, TrainConfig(objective="dpo", dpo={"beta": 0.1}), CPU)
    loss_B.sum().backward()
    margin = torch.tensor(0.1 * (-1.0 - 0.0))
    assert loss_B.item() == pytest.approx(-torch.nn.functional.logsigmoid(margin).item(), abs=1e-6)
    coef = 0.1 * torch.sigmoid(-margin).item()  # d loss / d log π(y_w) = −β σ(−margin)
    assert model.table.grad[1, 1:3].tolist() == pytest.approx([-coef] * 2, abs=1e-6)
    assert model.table.grad[2, 1:4].tolist() == pytest.approx([coef] * 3, abs=1e-6)
    assert model.table.grad[0].abs().sum().item() == 0.0 and diag["dpo_pair_share"] == 1.0


@pytest.mark.parametrize("rewards,pair", [([1.0, 0.0], None), ([0.0, -1.0, -1.0], 1), ([1.0, 1.0], None)])
def test_dpo_on_samples_pairs_only_a_sample_the_judge_rated_worse(rewards, pair):
    """The worst sample is "rejected" only when its reward is < 0 (strictly worse than y)."""
    grp = _group([[1, 2]] * len(rewards), rewards, ref=[[-1.0, -1.0]] * len(rewards))
    grp.ref_reference = [-1.0, -1.0]
    batch = collate([grp], pad_id=0)
    table = _table_for(batch)
    table[:, 1:3] = -2.0
    model = TableLogps(table)
    loss_B, _, diag = step_loss(model, batch, TrainConfig(objective="dpo", dpo={"pairs": "samples"}), CPU)
    loss_B.sum().backward()
    if pair is None:
        assert loss_B.item() == 0.0 and model.table.grad.abs().sum().item() == 0.0
        assert diag["dpo_pair_share"] == 0.0
    else:
        assert loss_B.item() == pytest.approx(0.6931, abs=1e-4) and diag["dpo_pair_share"] == 1.0
        rows = model.table.grad.abs().sum(-1) > 0
        assert rows.nonzero().flatten().tolist() == [pair, len(rewards)]  # the first worst sample and y


class TableLogpsValues(TableLogps):
    """TableLogps plus a learnable table of values."""

    def __init__(self, logps_NT, values_NT):
        super().__init__(logps_NT)
        self.values = torch.nn.Parameter(values_NT.clone())

    def forward(self, input_ids_RT, rows_K, cols_K, **_):
        return self.table[rows_K, cols_K], self.values[rows_K, cols_K]


def test_ppo_learns_from_rewards_via_gae_and_ignores_the_stored_advantages():
    grp = _group([[1, 2], [3, 4]], [1.0, -1.0], behaviour=[[-1.0, -1.0], [-1.0, -1.0]])
    batch = collate([grp], pad_id=0)
    table = _table_for(batch)
    table[:2, 1:3] = -1.0  # at the behaviour policy
    cfg = TrainConfig(objective="ppo", ppo={"kl": 0.0, "gae_lambda": 1.0, "gamma": 1.0})
    model = TableLogpsValues(table, torch.zeros_like(table))
    loss_B, terms, diag = step_loss(model, batch, cfg, CPU)
    loss_B.sum().backward()
    # V = 0, γ = λ = 1: Â_t = R on every token, whitened over the 4 tokens to ±1 (sample std √(4/3)).
    a = (4 / 3) ** -0.5
    assert model.table.grad[0, 1:3].tolist() == pytest.approx([-a / 4] * 2, abs=1e-5)
    assert model.table.grad[1, 1:3].tolist() == pytest.approx([a / 4] * 2, abs=1e-5)
    # value loss c_V·½(V − R)²: d/dV = c_V (V − R) / (G·|o|)
    assert model.values.grad[0, 1:3].tolist() == pytest.approx([-cfg.ppo.vf_coef / 4] * 2, abs=1e-6)
    assert set(terms) == {"policy", "value"} and diag["value_mean"] == 0.0
    other = collate([_group([[1, 2], [3, 4]], [1.0, -1.0], behaviour=[[-1.0, -1.0], [-1.0, -1.0]])], pad_id=0)
    other = type(other)(**{**other.__dict__, "adv_BG": torch.tensor([[-7.0, 7.0]])})
    again, _, _ = step_loss(TableLogpsValues(table, torch.zeros_like(table)), other, cfg, CPU)
    assert again.item() == pytest.approx(loss_B.item())


def test_value_head_is_learner_only():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from grao_pipe.learner.logprobs import CausalLMLogpsValues, policy_state_dict

    cfg = Qwen2Config(vocab_size=20, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32)
    lm = Qwen2ForCausalLM(cfg)
    model = CausalLMLogpsValues(lm)
    ids = torch.tensor([[1, 2, 3, 4]])
    logps, values = model(ids, torch.tensor([0, 0]), torch.tensor([1, 2]))
    assert logps.shape == values.shape == (2,) and values.abs().sum().item() == 0.0  # zero-initialised
    state = model.state_dict()
    assert {"value_head.weight", "value_head.bias"} <= set(state)
    Qwen2ForCausalLM(cfg).load_state_dict(policy_state_dict(state))  # strict: exactly the LM's keys


def test_ppo_kl_penalty_reads_the_policy_being_trained_not_the_behaviour_policy():
    """Round 1: the behaviour policy is the reference model. The penalty must still see πθ move."""
    beh = [[-1.0, -1.0]]
    grp = _group([[1, 2]], [0.0], behaviour=beh, ref=beh)
    batch = collate([grp], pad_id=0)
    table = _table_for(batch)
    table[0, 1:3] = -0.5  # πθ drifted above π_ref = π_behaviour on both tokens
    cfg = TrainConfig(objective="ppo", ppo={"kl": 0.1})
    _, _, diag = step_loss(TableLogpsValues(table, torch.zeros_like(table)), batch, cfg, CPU)
    assert diag["ppo_kl"] == pytest.approx(0.5)
