"""GPU checks (skipped without CUDA): the hf backend and the packed learner step on a device,
and vLLM where it is installed. Run: pytest tests/gpu -q"""

import pytest

torch = pytest.importorskip("torch")

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_hf_backend_generates_on_cuda(tiny_config):
    import pyarrow.parquet as pq
    from stage_runner import run_stage

    from grao_pipe.config import load_config

    out = run_stage("generate", load_config(tiny_config()))
    rows = pq.read_table(next(out.target.dir.path.glob("shard-*.parquet"))).to_pylist()
    assert rows and all(len(r["behaviour_logprobs"]) == len(r["response_token_ids"]) for r in rows)


def test_packed_step_matches_padded_on_cuda():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from grao_pipe.config import TrainConfig
    from grao_pipe.learner.data import collate, pack
    from grao_pipe.learner.step import step_loss

    bench = pytest.importorskip("bench_learner")
    dev = torch.device("cuda")
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=512, hidden_size=128, intermediate_size=256,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                         max_position_embeddings=4096)).to(dev).eval()
    batch = collate(bench.make_groups(2, 4, 512, 100, 400), 0)
    a, _, _ = step_loss(model, batch, TrainConfig(), dev)
    b, _, _ = step_loss(model, batch, TrainConfig(), dev, pack(batch, 2048, 0))
    assert b.tolist() == pytest.approx(a.tolist(), abs=1e-4)


def test_vllm_backend_if_installed(tiny_config):
    pytest.importorskip("vllm")
    import pyarrow.parquet as pq
    from stage_runner import run_stage

    from grao_pipe.config import load_config

    out = run_stage("generate", load_config(tiny_config(), ["generate.backend=vllm"]))
    rows = pq.read_table(next(out.target.dir.path.glob("shard-*.parquet"))).to_pylist()
    assert rows and rows[0]["backend"] == "vllm"
