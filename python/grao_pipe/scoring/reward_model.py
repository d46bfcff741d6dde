"""Scalar reward model: a transformers sequence classifier r(q, text); R(o, y) = r(q, o) - r(q, y).

Batches are formed by length (sorted), each sequence is right-padded and read at its own last
token, so a sequence's score does not depend on which batch it landed in.
"""

from __future__ import annotations

import math
from pathlib import Path

from grao_pipe.config import RewardModelScorer
from grao_pipe.scoring.base import ScoreResult


class RewardModel:
    def __init__(self, cfg: RewardModelScorer, path: Path):
        import torch

        from grao_pipe import hf

        purpose = f"score.scorers[{cfg.name}] (reward model)"
        self.cfg = cfg
        self.name = cfg.name
        self._torch = torch
        self.tok = hf.load_tokenizer(path, purpose=purpose)
        self.model = hf.load_model(path, kind="sequence_classifier", purpose=purpose)

    def rewards(self, texts: list[str]) -> list[float]:
        """r(text) for each text, batched by length."""
        torch = self._torch
        ids = [self.tok(t, add_special_tokens=True, truncation=True, max_length=self.cfg.max_length)["input_ids"]
               for t in texts]
        from grao_pipe import hf

        order = sorted(range(len(ids)), key=lambda i: (len(ids[i]), i))
        out = [0.0] * len(ids)
        for b in range(0, len(order), self.cfg.batch_size):
            idx = order[b : b + self.cfg.batch_size]
            x, mask = (t.to(self.model.device) for t in hf.pad([ids[i] for i in idx], self.tok.pad_token_id))
            with torch.no_grad():
                # Read the score at each sequence's own last token (not via pad-token search,
                # which breaks when pad == eos appears in the text).
                hidden = self.model.base_model(input_ids=x, attention_mask=mask).last_hidden_state
                last = hidden[torch.arange(len(idx)), mask.sum(1) - 1]
                head = getattr(self.model, "score", None) or self.model.classifier
                scores = head(last)[:, 0].float().tolist()
            for r, i in enumerate(idx):
                out[i] = scores[r]
        return out

    def score(self, prompts: list[str], responses: list[str], references: list[str]) -> ScoreResult:
        # r(q, y) is computed once per group, not once per sample.
        refs = list(dict.fromkeys(p + y for p, y in zip(prompts, references, strict=True)))
        r = self.rewards([p + o for p, o in zip(prompts, responses, strict=True)] + refs)
        n = len(prompts)
        r_ref = dict(zip(refs, r[n:], strict=True))
        squash = math.tanh if self.cfg.squash == "tanh" else (lambda v: v)
        return ScoreResult([squash(r[i] - r_ref[p + y]) for i, (p, y) in enumerate(zip(prompts, references, strict=True))])
