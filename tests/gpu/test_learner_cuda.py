"""GPU checks of the learner's throughput path (skipped without CUDA): the chunked LM head
under bf16 autocast, flex attention with the block-sparse document mask against sdpa with the
dense mask (forward and backward, which torch cannot run on CPU), and the log-prob wrapper as
the FSDP2 root (tied head, bf16 parameters). Run: pytest tests/gpu -q"""

import pytest

torch = pytest.importorskip("torch")

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

V = 512


def _model(attn: str, tied: bool = True):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=V, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                      tie_word_embeddings=tied, attn_implementation=attn)
    return Qwen2ForCausalLM(cfg).to("cuda")


def _batch(seed: int = 0):
    from grao_pipe.learner.data import collate

    bench = pytest.importorskip("bench_learner")
    return collate(bench.make_groups(3, 4, V, 100, 400, seed=seed), 0)


def _loss_and_grads(model, batch, packed, chunk: int, attn: str, autocast: bool):
    from grao_pipe.config import TrainConfig
    from grao_pipe.learner.step import step_loss

    model.zero_grad(set_to_none=True)
    cfg = TrainConfig(logprob_chunk_tokens=chunk, attn_implementation=attn)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        loss_B, _, _ = step_loss(model, batch, cfg, torch.device("cuda"), packed)
    loss_B.sum().backward()
    return loss_B.detach().float(), {n: p.grad.float().clone() for n, p in model.named_parameters()}


def _close(a: dict, b: dict, rtol: float) -> None:
    assert a.keys() == b.keys()
    for k in a:
        scale = b[k].abs().max().clamp(min=1e-6)
        assert (a[k] - b[k]).abs().max() <= rtol * scale, k


@pytest.mark.parametrize("packed", [False, True])
def test_chunked_head_matches_full_head_bf16(packed):
    from grao_pipe.learner.data import pack

    model = _model("sdpa")
    batch = _batch()
    pk = pack(batch, 2048, 0) if packed else None
    l0, g0 = _loss_and_grads(model, batch, pk, 0, "sdpa", autocast=True)
    l1, g1 = _loss_and_grads(model, batch, pk, 64, "sdpa", autocast=True)
    assert torch.allclose(l1, l0, atol=2e-2)
    _close(g1, g0, rtol=5e-2)


@pytest.mark.parametrize("packed", [False, True])
def test_flex_attention_matches_dense_mask_forward_and_backward(packed):
    from grao_pipe.learner.data import pack

    batch = _batch(1)
    pk = pack(batch, 1000, 0) if packed else None  # 1000: the last 128-block is incomplete
    l_ref, g_ref = _loss_and_grads(_model("sdpa"), batch, pk, 256, "sdpa", autocast=False)
    l_flex, g_flex = _loss_and_grads(_model("flex_attention"), batch, pk, 256, "flex_attention", autocast=False)
    assert torch.allclose(l_flex, l_ref, atol=1e-3)
    _close(g_flex, g_ref, rtol=1e-2)


def test_logps_wrapper_is_the_fsdp_root(tmp_path):
    """One-rank FSDP2 with bf16 params: the chunked head and the tied embedding are unsharded
    by the root's hooks; loss and gradients match the unsharded model; keys stay HF's."""
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from grao_pipe.learner.data import pack
    from grao_pipe.learner.fsdp import shard_model
    from grao_pipe.learner.logprobs import CausalLMLogps

    batch = _batch(2)
    pk = pack(batch, 2048, 0)
    plain = _model("flex_attention")
    l_ref, _ = _loss_and_grads(plain, batch, pk, 64, "flex_attention", autocast=True)
    keys = list(plain.state_dict())
    dist.init_process_group("nccl", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        model = CausalLMLogps(_model("flex_attention"))
        shard_model(model, torch.device("cuda"))
        l_fsdp, grads = _loss_and_grads(model, batch, pk, 64, "flex_attention", autocast=False)
        assert torch.allclose(l_fsdp, l_ref, rtol=2e-2, atol=5e-2)
        assert all(torch.isfinite(g.full_tensor() if hasattr(g, "full_tensor") else g).all() for g in grads.values())
        full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        assert list(full) == keys
    finally:
        dist.destroy_process_group()
