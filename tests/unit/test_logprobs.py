"""Chunked LM-head log-probs equal the full-logits path (values and gradients), padded and
packed, tied and untied heads; the flex-attention document mask equals the dense one."""

import pytest

torch = pytest.importorskip("torch")

from grao_pipe.config import TrainConfig  # noqa: E402
from grao_pipe.learner import attention  # noqa: E402
from grao_pipe.learner.data import Group, collate, pack  # noqa: E402
from grao_pipe.learner.logprobs import CausalLMLogps, chunked_token_logps, full_token_logps  # noqa: E402
from grao_pipe.learner.step import step_loss, token_logps  # noqa: E402

CPU = torch.device("cpu")
V = 50


def _groups(seed=0):
    g = torch.Generator().manual_seed(seed)

    def toks(n):
        return torch.randint(1, V, (n,), generator=g).tolist()

    return [Group(f"g{k}", toks(3 + k), toks(2 + 2 * k), 0.7, None,
                  responses=[toks(1 + (k + j) % 5) for j in range(3)], advantages=[0.5, -0.25, 1.0],
                  rewards=[1.0, 0.0, -1.0], behaviour=[None] * 3, ref=[None] * 3) for k in range(3)]


def _model(tied, attn="sdpa"):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=tied, attn_implementation=attn)
    model = Qwen2ForCausalLM(cfg).eval()
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == tied
    return model


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_chunked_head_equals_full_logits_values_and_gradients():
    g = torch.Generator().manual_seed(1)
    h = torch.randn(37, 16, generator=g, requires_grad=True)
    w = torch.randn(V, 16, generator=g, requires_grad=True)
    tgt = torch.randint(0, V, (37,), generator=g)
    up = torch.randn(37, generator=g)  # an arbitrary upstream gradient
    ref = full_token_logps(h @ w.T, tgt)
    (ref * up).sum().backward()
    gh, gw = h.grad.clone(), w.grad.clone()
    for chunk in (1, 5, 37, 100):
        h.grad = w.grad = None
        got = chunked_token_logps(h, w, tgt, chunk)
        (got * up).sum().backward()
        assert torch.allclose(got, ref, atol=1e-5)
        assert torch.allclose(h.grad, gh, atol=1e-5) and torch.allclose(w.grad, gw, atol=1e-5)


def test_chunked_head_follows_autocast():
    """Under bf16 autocast the chunks' matmuls run in bf16, like lm_head would."""
    g = torch.Generator().manual_seed(2)
    h = torch.randn(20, 16, generator=g, requires_grad=True)
    w = torch.randn(V, 16, generator=g, requires_grad=True)
    tgt = torch.randint(0, V, (20,), generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = full_token_logps(torch.nn.functional.linear(h, w), tgt)
        got = chunked_token_logps(h, w, tgt, 6)
    assert got.dtype == torch.float32
    assert torch.allclose(got, ref, atol=1e-3)
    got.sum().backward()
    assert h.grad.dtype == torch.float32 and w.grad.dtype == torch.float32


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("packed", [False, True])
def test_chunked_equals_unchunked_in_the_learner(tied, packed):
    model = _model(tied)
    batch = collate(_groups(), pad_id=0)
    pk = pack(batch, 32, 0) if packed else None
    results = []
    for chunk in (0, 3):  # 0: one projection of all scored tokens
        model.zero_grad(set_to_none=True)
        loss_B, _, _ = step_loss(model, batch, TrainConfig(logprob_chunk_tokens=chunk), CPU, pk)
        (loss_B * torch.tensor([1.0, -2.0, 0.5])).sum().backward()
        results.append((loss_B.detach(), _grads(model)))
    (l0, g0), (l1, g1) = results
    assert torch.allclose(l1, l0, atol=1e-5)
    assert g0.keys() == g1.keys()
    assert ("lm_head.weight" in g0) == (not tied)  # a tied head is the embedding parameter
    for name in g0:
        assert torch.allclose(g1[name], g0[name], atol=1e-5), name


@pytest.mark.parametrize("packed", [False, True])
def test_scored_positions_match_the_full_model_forward(packed):
    """Regression guard against the pre-chunking path: model(...).logits, log-softmax, gather."""
    model = _model(tied=True)
    batch = collate(_groups(1), pad_id=0)
    with torch.no_grad():
        got = token_logps(model, batch, CPU, pack(batch, 32, 0) if packed else None, chunk_tokens=4)
        logits = model(input_ids=batch.input_ids_NT, attention_mask=batch.attention_mask_NT).logits
        ref = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, batch.input_ids_NT[:, 1:, None])[..., 0]
    mask = batch.loss_mask_NT > 0
    assert torch.allclose(got[mask], ref[mask], atol=1e-5)
    assert (got[~mask] == 0).all()  # positions no loss reads are not computed


@pytest.mark.parametrize("tied", [True, False])
def test_wrapper_keeps_the_causal_lm_state_dict_keys(tied):
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    model = _model(tied)
    wrapped = CausalLMLogps(model)
    assert list(wrapped.state_dict()) == list(model.state_dict())
    assert list(get_model_state_dict(wrapped)) == list(get_model_state_dict(model))


def _segments(t, seed):
    """Packed rows: runs of random lengths (some of one token), then a padding tail of -1."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for r in range(3):
        row, n = [], 0
        while len(row) < t:
            row += [n] * int(torch.randint(1, 4 if r == 0 else 70, (), generator=g))
            n += 1
        row = row[:t]
        pad = int(torch.randint(0, 20, (), generator=g))
        rows.append(row[: t - pad] + [-1] * pad)
    return torch.tensor(rows)


@pytest.mark.parametrize("t,block", [(100, 16), (300, 128), (256, 64), (97, 8)])
def test_document_block_mask_equals_the_mask_mod_reference(t, block):
    from torch.nn.attention.flex_attention import create_block_mask

    seg = _segments(t, t + block)
    doc = attention.document_ids(seg)
    ref = create_block_mask(lambda b, h, q, kv: (q >= kv) & (doc[b, q] == doc[b, kv]), 3, None, t, t,
                            device="cpu", BLOCK_SIZE=block)
    got = attention.document_block_mask(seg, block)
    assert got.shape == ref.shape
    assert torch.equal(got.to_dense(), ref.to_dense())
    assert torch.equal(got.full_kv_num_blocks, ref.full_kv_num_blocks)  # full vs partial split too


def _eager_flex(monkeypatch):
    """transformers compiles flex attention on first use (~30 s on CPU) and torch has no flex
    backward on CPU: run the eager forward instead (it materialises the scores; fine here)."""
    from torch.nn.attention.flex_attention import flex_attention
    from transformers.integrations import flex_attention as hf_flex

    calls = []

    def eager(q, k, v, training=False, **kw):
        calls.append(kw["block_mask"])
        return flex_attention(q, k, v, **kw)

    monkeypatch.setattr(hf_flex, "compile_friendly_flex_attention", eager)
    return calls


@pytest.mark.parametrize("packed", [False, True])
def test_flex_attention_equals_the_dense_mask_path(monkeypatch, packed):
    import warnings

    calls = _eager_flex(monkeypatch)
    batch = collate(_groups(2), pad_id=0)
    pk = pack(batch, 160, 0) if packed else None  # 160: the last flex block is incomplete
    with torch.no_grad():
        ref = token_logps(_model(True, "sdpa"), batch, CPU, pk, chunk_tokens=8)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")
            got = token_logps(_model(True, "flex_attention"), batch, CPU, pk, chunk_tokens=8)
    assert len(calls) == 2 and all(bm is calls[0] for bm in calls)  # one BlockMask, every layer
    assert torch.allclose(got, ref, atol=1e-5)


def test_packed_sdpa_boolean_mask_equals_eager_additive_mask():
    batch = collate(_groups(3), pad_id=0)
    pk = pack(batch, 32, 0)
    assert attention.packed_mask(pk, "sdpa", CPU).dtype == torch.bool
    assert attention.packed_mask(pk, "eager", CPU).dtype == torch.float32
    with torch.no_grad():
        a = token_logps(_model(False, "sdpa"), batch, CPU, pk, chunk_tokens=5)
        b = token_logps(_model(False, "eager"), batch, CPU, pk, chunk_tokens=5)
    assert torch.allclose(a, b, atol=1e-5)


def test_flash_packed_rows_get_no_mask():
    batch = collate(_groups(), pad_id=0)
    assert attention.packed_mask(pack(batch, 32, 0), "flash_attention_2", CPU) is None


def test_logit_transforms_are_refused():
    model = _model(True)
    model.config.final_logit_softcapping = 30.0
    with pytest.raises(TypeError, match="final_logit_softcapping"):
        CausalLMLogps(model)
