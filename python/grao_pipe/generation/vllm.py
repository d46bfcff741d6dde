"""vLLM in-process backend (GPU): ``LLM.generate`` with n = G, seeded ``SamplingParams``,
sampled-token log-probs, tensor parallelism and prefix caching. vLLM is imported lazily (the
``vllm`` extra); the request/response mapping is plain code tested without it.

A LoRA policy (``train.lora``) is the base model plus its adapter as a ``LoRARequest``
(``enable_lora``, ``max_lora_rank`` from the adapter's rank), so a round never loads a merged
copy of the base."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from grao_pipe.config import GenerateConfig
from grao_pipe.generation import Request, Sample, sample_seed


def sampling_kwargs(cfg: GenerateConfig, seed: int) -> dict[str, Any]:
    """Arguments of ``vllm.SamplingParams`` for one prompt's group of G samples."""
    return {"n": cfg.num_samples, "temperature": cfg.temperature, "top_p": cfg.top_p,
            "max_tokens": cfg.max_new_tokens, "seed": seed, "logprobs": 0}


def map_output(output: Any, seed: int, decode: Any = None) -> list[Sample]:
    """A vLLM ``RequestOutput`` -> G Samples. ``logprobs=0`` makes vLLM return, per position, a
    dict {token_id: Logprob} holding the sampled token (raw log-probs, temperature 1)."""
    samples = []
    for c in output.outputs:
        ids = [int(t) for t in c.token_ids]
        lps = None
        if c.logprobs is not None and len(c.logprobs) == len(ids):
            lps = [float(pos[t].logprob) for pos, t in zip(c.logprobs, ids, strict=True)]
        reason = "stop" if c.finish_reason == "stop" else "length"
        samples.append(Sample(c.text if decode is None else decode(ids), ids, lps, reason, seed))
    return samples


# vLLM's accepted max_lora_rank values (it rejects others): the adapter's rank rounded up.
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def engine_kwargs(model_dir: Path, cfg: GenerateConfig, trust_remote_code: bool,
                  adapter_dir: Path | None = None) -> dict[str, Any]:
    """Arguments of ``vllm.LLM``; with an adapter, LoRA serving sized to its rank."""
    kw: dict[str, Any] = {"model": str(model_dir), "tensor_parallel_size": cfg.tensor_parallel_size,
                          "enable_prefix_caching": True, "trust_remote_code": trust_remote_code, "seed": cfg.seed}
    if adapter_dir is not None:
        rank = int(json.loads((adapter_dir / "adapter_config.json").read_text())["r"])
        fits = [r for r in VLLM_LORA_RANKS if r >= rank]
        if not fits:
            raise ValueError(f"{adapter_dir}: LoRA rank {rank} is above what vLLM serves ({VLLM_LORA_RANKS[-1]})")
        kw |= {"enable_lora": True, "max_lora_rank": fits[0], "max_loras": 1}
    return kw


def lora_request_args(adapter_dir: Path) -> tuple[str, int, str]:
    """``vllm.lora.request.LoRARequest(name, int_id, path)`` for the policy's adapter: one
    adapter per engine, so id 1; named after its directory's parent (the train version)."""
    return adapter_dir.parent.name or "policy", 1, str(adapter_dir)


class VLLMSampler:
    name = "vllm"

    def __init__(self, model_dir: Path, cfg: GenerateConfig, trust_remote_code: bool = False,
                 adapter_dir: Path | None = None):
        from vllm import LLM  # the `vllm` extra; GPU only

        self.cfg = cfg
        self.llm = LLM(**engine_kwargs(model_dir, cfg, trust_remote_code, adapter_dir))
        self.lora: Any = None
        if adapter_dir is not None:
            from vllm.lora.request import LoRARequest

            self.lora = LoRARequest(*lora_request_args(adapter_dir))

    def sample(self, requests: list[Request], seed: int) -> list[list[Sample]]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        seeds = [sample_seed(seed, r.text, 0) for r in requests]
        params = [SamplingParams(**sampling_kwargs(self.cfg, s)) for s in seeds]
        prompts = [TokensPrompt(prompt_token_ids=r.token_ids) for r in requests]
        outputs = self.llm.generate(prompts, params, use_tqdm=False, lora_request=self.lora)
        return [map_output(o, s) for o, s in zip(outputs, seeds, strict=True)]
