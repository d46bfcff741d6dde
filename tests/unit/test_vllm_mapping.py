"""The vLLM adapter's request and response mapping, without vLLM (it needs a GPU)."""

from dataclasses import dataclass

import pytest

from grao_pipe.config import GenerateConfig
from grao_pipe.generation.vllm import map_output, sampling_kwargs


@dataclass
class _Logprob:
    logprob: float


@dataclass
class _Completion:  # the fields of vllm.CompletionOutput that the adapter reads
    text: str
    token_ids: list
    logprobs: list | None
    finish_reason: str


@dataclass
class _RequestOutput:
    outputs: list


def test_sampling_params_follow_config():
    kw = sampling_kwargs(GenerateConfig(num_samples=8, temperature=0.7, max_new_tokens=2048), seed=42)
    assert kw == {"n": 8, "temperature": 0.7, "top_p": 1.0, "max_tokens": 2048, "seed": 42, "logprobs": 0}


def test_output_mapping_reads_sampled_token_logprobs():
    out = _RequestOutput([
        _Completion("ab", [5, 6, 2], [{5: _Logprob(-0.1), 9: _Logprob(-3)}, {6: _Logprob(-0.2)}, {2: _Logprob(-0.3)}], "stop"),
        _Completion("abc", [5, 6, 7], None, "length"),
    ])
    a, b = map_output(out, seed=7)
    assert a.token_ids == [5, 6, 2] and a.logprobs == [-0.1, -0.2, -0.3] and a.finish_reason == "stop"
    assert a.seed == 7 and a.text == "ab"
    assert b.logprobs is None and b.finish_reason == "length"


def test_engine_serves_a_lora_adapter_sized_to_its_rank(tmp_path):
    import json
    from pathlib import Path

    from grao_pipe.generation.vllm import engine_kwargs, lora_request_args

    cfg = GenerateConfig(tensor_parallel_size=2, seed=3)
    plain = engine_kwargs(Path("/m"), cfg, False)
    assert plain == {"model": "/m", "tensor_parallel_size": 2, "enable_prefix_caching": True,
                     "trust_remote_code": False, "seed": 3}
    adapter = tmp_path / "train-key" / "adapter"
    adapter.mkdir(parents=True)
    for rank, served in ((16, 16), (12, 16), (4, 8), (300, 320)):
        (adapter / "adapter_config.json").write_text(json.dumps({"r": rank, "lora_alpha": 2 * rank}))
        kw = engine_kwargs(Path("/base"), cfg, False, adapter)
        assert kw == {**plain, "model": "/base", "enable_lora": True, "max_lora_rank": served, "max_loras": 1}
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 1024}))
    with pytest.raises(ValueError, match="rank 1024 is above what vLLM serves"):
        engine_kwargs(Path("/base"), cfg, False, adapter)
    assert lora_request_args(adapter) == ("train-key", 1, str(adapter))
