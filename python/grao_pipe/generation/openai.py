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
from grao_pipe.openai_client import OpenAIClient


class OpenAISampler:
    name = "openai"

    def __init__(self, cfg: GenerateConfig, tok: PolicyTokenizer, default_model: str):
        if not cfg.base_url:
            raise ConfigError("generate.base_url is required for the openai backend (e.g. http://host:8000/v1)")
        self.cfg = cfg
        self.tok = tok
        self.model = cfg.served_model or default_model
        self.client = OpenAIClient(cfg.base_url, os.environ.get(cfg.api_key_env), timeout_s=cfg.timeout_s,
                                   max_retries=cfg.max_retries, concurrency=cfg.concurrency)

    def body(self, req: Request, seed: int) -> tuple[str, dict[str, Any]]:
        common = {"model": self.model, "max_tokens": self.cfg.max_new_tokens, "temperature": self.cfg.temperature,
                  "top_p": self.cfg.top_p, "seed": seed, "n": 1}
        if req.prompt.messages is not None:
            msgs = [{"role": r, "content": c} for r, c in req.prompt.messages]
            return "/chat/completions", {**common, "messages": msgs, "logprobs": True}
        return "/completions", {**common, "prompt": req.text, "logprobs": 1}

    def parse(self, response: dict[str, Any], seed: int) -> Sample:
        choice = response["choices"][0]
        if "message" in choice:
            text = (choice.get("message") or {}).get("content") or ""
            lp = [t.get("logprob") for t in ((choice.get("logprobs") or {}).get("content") or [])]
        else:
            text = choice.get("text") or ""
            lp = list((choice.get("logprobs") or {}).get("token_logprobs") or [])
        reason = "stop" if choice.get("finish_reason") == "stop" else "length"
        ids = self.tok.encode(text) + ([self.tok.eos_id] if reason == "stop" else [])
        logprobs = [float(x) for x in lp] if lp and len(lp) == len(ids) and None not in lp else None
        return Sample(text, ids, logprobs, reason, seed)

    def sample(self, requests: list[Request], seed: int) -> list[list[Sample]]:
        g = self.cfg.num_samples
        jobs = [(r, sample_seed(seed, r.text, j)) for r in requests for j in range(g)]
        by_path: dict[str, list[int]] = {}
        bodies = []
        for i, (r, s) in enumerate(jobs):
            path, body = self.body(r, s)
            by_path.setdefault(path, []).append(i)
            bodies.append(body)
        out: list[Sample | None] = [None] * len(jobs)
        for path, idx in by_path.items():
            for i, resp in zip(idx, self.client.chat_many([bodies[i] for i in idx], path), strict=True):
                out[i] = self.parse(resp, jobs[i][1])
        samples = [s for s in out if s is not None]
        return [samples[p * g : (p + 1) * g] for p in range(len(requests))]
