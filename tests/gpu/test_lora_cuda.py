"""LoRA on CUDA (skipped without it): the log-prob wrapper with adapters as the FSDP2 root in
bf16 mixed precision (one rank, NCCL): the first loss equals the base model's, gradients reach
only the adapters, and one AdamW step moves only them. Run: pytest tests/gpu -q"""

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

V = 512


def _lm():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=V, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                      tie_word_embeddings=True, attn_implementation="sdpa")
    return Qwen2ForCausalLM(cfg).to("cuda")


def test_lora_under_fsdp2_bf16(tmp_path):
    import torch.distributed as dist

    from grao_pipe.config import LoraConfig, TrainConfig
    from grao_pipe.learner import lora
    from grao_pipe.learner.data import collate
    from grao_pipe.learner.fsdp import shard_model
    from grao_pipe.learner.logprobs import CausalLMLogps
    from grao_pipe.learner.objectives import step_loss

    bench = pytest.importorskip("bench_learner")
    batch = collate(bench.make_groups(3, 4, V, 100, 400, seed=0), 0)
    cfg = TrainConfig(logprob_chunk_tokens=64)
    dev = torch.device("cuda")
    dist.init_process_group("nccl", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        base = CausalLMLogps(_lm())
        shard_model(base, dev)
        with torch.no_grad():
            want = step_loss(base, batch, cfg, dev)[0]
        model = CausalLMLogps(lora.apply(_lm(), LoraConfig(r=8)))
        shard_model(model, dev)
        before = {n: p.full_tensor().clone() for n, p in model.named_parameters()}
        loss = step_loss(model, batch, cfg, dev)[0]
        assert torch.allclose(loss.detach(), want, rtol=0, atol=1e-5)  # B = 0: the base model
        loss.sum().backward()
        assert {n for n, p in model.named_parameters() if p.grad is not None} == \
            {n for n, _ in model.named_parameters() if lora.is_adapter_param(n)}
        opt = torch.optim.AdamW(lora.trainable(model), lr=1e-2)
        opt.step()
        moved = {n for n, p in model.named_parameters() if not torch.equal(p.full_tensor(), before[n])}
        assert moved and all(".lora_" in n for n in moved)
    finally:
        dist.destroy_process_group()
