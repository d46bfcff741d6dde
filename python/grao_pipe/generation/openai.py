"""OpenAI-compatible backend (vLLM/SGLang server fleets, hosted APIs).

Chat prompts go to ``/chat/completions`` (the server applies its chat template), plain-text
prompts to ``/completions``. Each of the G samples is its own request with its own seed, so a
retried request reproduces the same sample on servers that honour seeds. Token ids are
computed with the policy's local tokenizer; log-probs are stored when the server returns them
and match those tokens, otherwise left null.
"""

from __future__ import annotations

import os
from typing import Any

from grao_pipe.config import GenerateConfig
from grao_pipe.errors import ConfigError
from grao_pipe.generation import Request, Sample, sample_seed
from grao_pipe.generation.tokenizer import PolicyTokenizer
from grao_pipe.openai_client import EndpointError, OpenAIEndpoint


class OpenAISampler:
    name = "openai"

    def __init__(self, cfg: GenerateConfig, tok: PolicyTokenizer, default_model: str):
        if not cfg.base_url:
            raise ConfigError("generate.base_url is required for the openai backend (e.g. http://host:8000/v1)")
        self.cfg = cfg
        self.tok = tok
        self.model = cfg.served_model or default_model
        self.client = OpenAIEndpoint(cfg.base_url, os.environ.get(cfg.api_key_env), timeout_s=cfg.timeout_s,
                                     max_retries=cfg.max_retries, concurrency=cfg.concurrency)

    def body(self, req: Request, seed: int) -> tuple[bool, dict[str, Any]]:
        """(chat?, request body): chat prompts go to /chat/completions (the server applies its
        chat template), plain-text prompts to /completions."""
        common = {"model": self.model, "max_tokens": self.cfg.max_new_tokens, "temperature": self.cfg.temperature,
                  "top_p": self.cfg.top_p, "seed": seed, "n": 1}
        if req.prompt.messages is not None:
            msgs = [{"role": r, "content": c} for r, c in req.prompt.messages]
            return True, {**common, "messages": msgs, "logprobs": True}
        return False, {**common, "prompt": req.text, "logprobs": 1}

    def parse(self, response: Any, seed: int) -> Sample:
        if not response.choices:
            raise EndpointError(f"{self.client.base_url} answered without choices; check the served model")
        choice = response.choices[0]
        if hasattr(choice, "message"):
            text = (choice.message.content if choice.message is not None else None) or ""
            lp = [t.logprob for t in ((choice.logprobs.content if choice.logprobs else None) or [])]
        else:
            text = choice.text or ""
            lp = list((choice.logprobs.token_logprobs if choice.logprobs else None) or [])
        reason = "stop" if choice.finish_reason == "stop" else "length"
        ids = self.tok.encode(text) + ([self.tok.eos_id] if reason == "stop" else [])
        logprobs = [float(x) for x in lp] if lp and len(lp) == len(ids) and None not in lp else None
        return Sample(text, ids, logprobs, reason, seed)

    def sample(self, requests: list[Request], seed: int) -> list[list[Sample]]:
        g = self.cfg.num_samples
        jobs = [(r, sample_seed(seed, r.text, j)) for r in requests for j in range(g)]
        calls = [self.body(r, s) for r, s in jobs]
        responses = self.client.map(lambda c: self.client.chat(c[1]) if c[0] else self.client.complete(c[1]), calls)
        samples = [self.parse(resp, s) for resp, (_, s) in zip(responses, jobs, strict=True)]
        return [samples[p * g : (p + 1) * g] for p in range(len(requests))]
