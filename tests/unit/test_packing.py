"""Packed and padded forwards agree: same per-sequence log-probs and the same GRAO loss."""

import pytest

torch = pytest.importorskip("torch")

from grao_pipe.config import TrainConfig  # noqa: E402
from grao_pipe.learner.data import Group, collate, pack  # noqa: E402
from grao_pipe.learner.objectives import step_loss  # noqa: E402


def _groups():
    g = torch.Generator().manual_seed(0)

    def toks(n):
        return torch.randint(1, 40, (n,), generator=g).tolist()

    out = []
    for k in range(3):
        out.append(Group(f"g{k}", toks(3 + k), toks(2 + k), 0.7, None,
                         responses=[toks(1 + (k + j) % 4) for j in range(3 - (k == 2))],
                         advantages=[0.5, -0.25, 1.0][: 3 - (k == 2)], rewards=[1.0, 0.0, -1.0][: 3 - (k == 2)],
                         behaviour=[None] * 3, ref=[None] * 3))
    return out


@pytest.fixture(scope="module")
def model():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return Qwen2ForCausalLM(cfg).eval()


def test_pack_layout_and_counts():
    batch = collate(_groups(), pad_id=0)
    packed = pack(batch, budget=16, pad_id=0)
    lengths = batch.attention_mask_NT.sum(-1)
    assert packed.real_tokens == int(lengths.sum()) == batch.real_tokens
    assert packed.padded_tokens < batch.padded_tokens  # less padding than right-padded rows
    for n, length in enumerate(lengths.tolist()):
        where = (packed.segment_RT == n).nonzero()
        assert len(where) == length and len(set(where[:, 0].tolist())) == 1  # one row per sequence
        row = where[0, 0]
        assert packed.position_ids_RT[row, where[:, 1]].tolist() == list(range(length))


@pytest.mark.parametrize("objective", ["grao", "sft"])
def test_packed_and_padded_losses_agree(model, objective):
    cfg = TrainConfig(objective=objective)
    batch = collate(_groups(), pad_id=0)
    padded, _, _ = step_loss(model, batch, cfg, torch.device("cpu"))
    packed, _, _ = step_loss(model, batch, cfg, torch.device("cpu"), pack(batch, 16, 0))
    assert packed.tolist() == pytest.approx(padded.tolist(), abs=1e-5)


def test_too_long_sequence_is_refused():
    batch = collate(_groups(), pad_id=0)
    with pytest.raises(ValueError, match="budget"):
        pack(batch, budget=4, pad_id=0)
