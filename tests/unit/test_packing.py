"""Packed and padded forwards agree: same per-sequence log-probs and the same GRAO loss."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from grao_pipe.config import TrainConfig  # noqa: E402
from grao_pipe.learner.data import Group, collate, pack  # noqa: E402
from grao_pipe.learner.step import step_loss  # noqa: E402


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


def _chat_like_store(tmp_path, groups: int, seed: int = 0):
    """Groups shaped like a chat model's (SmolLM2-135M in issue #14): a prompt of ~400 tokens,
    8 responses that make sequences a bit longer than half of 2048, a shorter reference."""
    from score_rows import score_row, write_rows

    from grao_pipe.learner.data import GroupStore

    rng = np.random.default_rng(seed)
    rows = []
    for k in range(groups):
        prompt = rng.integers(1, 1000, int(rng.integers(350, 450))).tolist()
        reference = rng.integers(1, 1000, int(rng.integers(200, 400))).tolist()
        rows += [score_row(f"g{k}", j, prompt, rng.integers(1, 1000, int(rng.integers(650, 900))).tolist(), reference)
                 for j in range(8)]
    return GroupStore(write_rows(tmp_path, [rows]), tmp_path)


def test_packed_rows_are_never_more_padding_than_padded_rows(tmp_path):
    """Issue #14 item 5. Rows were max(pack_tokens, longest) = 2048 tokens wide; sequences a bit
    longer than 1024 fit one per row, and a rank's micro-batch (one or two groups) leaves its
    last row mostly empty: a third to a half of the rows was padding, more than right-padding to
    the longest sequence. Rows as narrow as the packing allows never pad more than that."""
    store = _chat_like_store(tmp_path, 4)
    for ks in ([0], [1, 2], [3, 0, 1, 2]):
        old = store.micro_batches(ks, 0, pack_tokens=2048, fit_rows=False)[0]  # the old row budget
        assert old.packed.padded_tokens > old.batch.padded_tokens  # the bad case
        assert 1 - old.packed.real_tokens / old.packed.padded_tokens > 0.3
        new = store.micro_batches(ks, 0, pack_tokens=2048)[0]
        assert new.packed.real_tokens == old.packed.real_tokens == new.batch.real_tokens
        assert new.packed.padded_tokens <= new.batch.padded_tokens
        assert new.packed.input_ids_RT.shape[1] <= 2048


def test_packed_rows_of_short_sequences_are_full(tmp_path):
    """Many sequences much shorter than the row: the last row's slack is spread over all rows
    (rows of 2048 would leave most of the last one empty)."""
    from score_rows import score_row, write_rows

    from grao_pipe.learner.data import GroupStore

    rng = np.random.default_rng(1)
    rows = [score_row(f"g{k}", j, [1] * 30, [2] * int(rng.integers(20, 120)), [3] * 40)
            for k in range(6) for j in range(8)]
    store = GroupStore(write_rows(tmp_path, [rows]), tmp_path)
    mb = store.micro_batches(range(6), 0, pack_tokens=2048)[0]
    fixed = store.micro_batches(range(6), 0, pack_tokens=2048, fit_rows=False)[0]
    assert mb.packed.padded_tokens < fixed.packed.padded_tokens
    assert 1 - mb.packed.real_tokens / mb.packed.padded_tokens < 0.03


def test_kernel_packed_and_padded_losses_agree(tmp_path, model):
    """The learner's micro-batches (Rust kernel, fitted rows): same GRAO loss packed or padded."""
    from score_rows import random_groups, write_rows

    from grao_pipe.learner.data import GroupStore

    store = GroupStore(write_rows(tmp_path, [random_groups(6, seed=2, vocab=40)]), tmp_path)
    for mb in store.micro_batches(range(len(store)), 0, micro_batch_tokens=60, pack_tokens=24):
        padded, _, _ = step_loss(model, mb.batch, TrainConfig(), torch.device("cpu"))
        packed, _, _ = step_loss(model, mb.batch, TrainConfig(), torch.device("cpu"), mb.packed)
        assert packed.tolist() == pytest.approx(padded.tolist(), abs=1e-5)
