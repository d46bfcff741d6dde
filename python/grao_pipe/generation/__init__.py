"""Sampling backends. Each returns, per prompt, G samples with token ids and log-probs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from grao_pipe.config import GenerateConfig
from grao_pipe.errors import InputError
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


def make_sampler(cfg: GenerateConfig, model_dir: Path, tok: PolicyTokenizer, trust_remote_code: bool = False,
                 adapter_dir: Path | None = None) -> Sampler:
    """The configured backend; heavy engines are imported only here. ``adapter_dir``: a LoRA
    adapter (PEFT format) on ``model_dir`` (``Policy.for_backend``): the hf backend merges it
    after loading, vllm serves it with a LoRARequest, openai asks the server for it by name."""
    if cfg.backend == "hf":
        from grao_pipe.generation.hf import HFSampler

        return HFSampler(model_dir, cfg, tok, trust_remote_code=trust_remote_code, adapter_dir=adapter_dir)
    if cfg.backend == "openai":
        from grao_pipe.generation.openai import OpenAISampler

        # The served name defaults to the path the server was started with (vllm serve PATH,
        # or --lora-modules PATH=PATH for an adapter); generate.served_model overrides it.
        return OpenAISampler(cfg, tok, default_model=str(adapter_dir or model_dir))
    from grao_pipe.generation.vllm import VLLMSampler

    return VLLMSampler(model_dir, cfg, trust_remote_code=trust_remote_code, adapter_dir=adapter_dir)


def prepare_requests(cfg: GenerateConfig, tok: PolicyTokenizer, prompts: list[Prompt]) -> tuple[list[Request], int, int]:
    """Render and tokenize; over-long prompts are truncated from the left or skipped (counted)."""
    limit = cfg.max_prompt_tokens or max(1, tok.context - cfg.max_new_tokens)
    # A prompt of more characters than ``limit`` tokens can span is over-long whatever its
    # tokens: decided before tokenizing it whole (a 20 MB line tokenized costs gigabytes).
    max_chars = 2 * limit * tok.max_token_chars
    out, skipped, truncated = [], 0, 0
    for p in prompts:
        text = tok.render(p)
        if len(text) > max_chars and (cfg.overlong_prompt == "skip" or p.messages is not None):
            skipped += 1
            continue
        # Truncation keeps the last ``limit`` tokens: only the tail that can hold them is tokenized.
        ids = tok.encode(text[-max_chars:] if len(text) > max_chars else text)
        if not ids:
            raise InputError(f"prompt {p.index} of the prompt set tokenizes to no tokens with the policy's "
                             "tokenizer; check the row, or the tokenizer (model.path)")
        if len(ids) > limit:
            if cfg.overlong_prompt == "skip" or p.messages is not None:
                skipped += 1  # a chat transcript cut in the middle is not a prompt: skip it
                continue
            ids = ids[-limit:]
            text = tok.decode(ids)
            truncated += 1
        out.append(Request(p, text, ids))
    return out, skipped, truncated
