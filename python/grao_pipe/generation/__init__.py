"""Sampling backends. Each returns, per prompt, G samples with token ids and log-probs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from grao_pipe.config import PipelineConfig
from grao_pipe.prompts import Prompt

if TYPE_CHECKING:
    from grao_pipe.generation.tokenizer import PolicyTokenizer


@dataclass(frozen=True)
class Sample:
    text: str
    token_ids: list[int]
    logprobs: list[float] | None  # behaviour log-probs (temperature 1); None if not returned
    finish_reason: str  # "stop" | "length"
    seed: int


@dataclass(frozen=True)
class Request:
    """A prompt ready to sample: rendered text, its token ids, and its chat form if any."""

    prompt: Prompt
    text: str
    token_ids: list[int]


class Sampler(Protocol):
    name: str

    def sample(self, requests: list[Request], seed: int) -> list[list[Sample]]: ...


def sample_seed(seed: int, group: str, sample_idx: int) -> int:
    """Per-sample seed for backends that seed each request (stable across runs and machines)."""
    import hashlib

    return int.from_bytes(hashlib.blake2b(f"{seed}:{group}:{sample_idx}".encode(), digest_size=4).digest(), "little")


def make_sampler(cfg: PipelineConfig, model_dir: Path, tok: PolicyTokenizer) -> Sampler:
    """The configured backend; heavy engines are imported only here."""
    if cfg.generate.backend == "hf":
        from grao_pipe.generation.hf import HFSampler

        return HFSampler(model_dir, cfg.generate, tok, trust_remote_code=cfg.model.trust_remote_code)
    if cfg.generate.backend == "openai":
        from grao_pipe.generation.openai import OpenAISampler

        return OpenAISampler(cfg.generate, tok, default_model=str(model_dir))
    from grao_pipe.generation.vllm import VLLMSampler

    return VLLMSampler(model_dir, cfg.generate, trust_remote_code=cfg.model.trust_remote_code)
