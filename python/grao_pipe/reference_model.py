"""Per-token log-probs of continuations under a frozen reference model (for DPO, GRPO's KL, PPO).

The LM head runs through the learner's chunked log-prob head (``learner.logprobs``), scoring
only the continuation tokens: the full ``[tokens, vocab]`` log-softmax is never materialised.
"""

from __future__ import annotations

from pathlib import Path

from grao_pipe import progress


class ReferenceModel:
    def __init__(self, model_dir: Path, batch_size: int = 16, chunk_tokens: int = 4096):
        import torch

        from grao_pipe import hf
        from grao_pipe.learner.logprobs import CausalLMLogps

        self._torch = torch
        model = hf.load_model(model_dir, purpose="score.reference_logprobs (the reference model)",
                              dtype=torch.float32)
        self.lm = CausalLMLogps(model).eval()
        self.device = model.device
        self.batch_size = batch_size
        self.chunk_tokens = chunk_tokens

    def token_logps(self, prompts: list[list[int]], continuations: list[list[int]]) -> list[list[float]]:
        """log π_ref(c_t | prompt, c_<t) for every continuation token, batched by length."""
        from grao_pipe import hf

        torch = self._torch
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]) + len(continuations[i]))
        out: list[list[float]] = [[] for _ in prompts]
        task = progress.task("reference log-probs", unit="sequences").grow(len(order))
        for b in range(0, len(order), self.batch_size):
            idx = order[b : b + self.batch_size]
            ids, attn = hf.pad([prompts[i] + continuations[i] for i in idx], 0)
            # Position (r, c) predicts token c + 1: the continuation's tokens are predicted from
            # positions p-1 .. p+len(c)-2 of each row.
            rows = torch.cat([torch.full((len(continuations[i]),), r) for r, i in enumerate(idx)])
            cols = torch.cat([torch.arange(len(prompts[i]) - 1, len(prompts[i]) - 1 + len(continuations[i]))
                              for i in idx])
            with torch.no_grad():
                lp = self.lm(ids.to(self.device), rows.to(self.device), cols.to(self.device),
                             attention_mask=attn.to(self.device), chunk_tokens=self.chunk_tokens)
            flat = lp.cpu().tolist()
            start = 0
            for i in idx:
                n = len(continuations[i])
                out[i] = flat[start : start + n]
                start += n
            task.advance(len(idx), tokens=int(attn.sum()))
        return out
