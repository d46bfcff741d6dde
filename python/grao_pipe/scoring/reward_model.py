"""Scalar reward model: a transformers sequence classifier r(q, text); R(o, y) = r(q, o) - r(q, y).

Batches are formed by length (sorted), each sequence is right-padded and read at its own last
token, so a sequence's score does not depend on which batch it landed in.
"""

from __future__ import annotations

import math
from pathlib import Path

import pyarrow as pa

from grao_pipe import progress
from grao_pipe.config import RewardModelScorer
from grao_pipe.scoring.base import ScoreInput, ScoreResult


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

    def rewards(self, texts: list[str], add_special_tokens: bool | list[bool] = True) -> list[float]:
        """r(text) for each text, batched by length. Texts rendered with a chat template already
        hold their special tokens: pass False for them."""
        torch = self._torch
        special = add_special_tokens if isinstance(add_special_tokens, list) else [add_special_tokens] * len(texts)
        ids = [self.tok(t, add_special_tokens=a, truncation=True, max_length=self.cfg.max_length)["input_ids"]
               for t, a in zip(texts, special, strict=True)]
        from grao_pipe import hf

        order = sorted(range(len(ids)), key=lambda i: (len(ids[i]), i))
        out = [0.0] * len(ids)
        task = progress.task(f"reward model {self.cfg.name}", unit="batches").grow(-(-len(order) // self.cfg.batch_size))
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
            task.advance(tokens=int(mask.sum()))
        return out

    def conversation(self, turns: list[tuple[str, str]], response: str) -> tuple[str, bool]:
        """The text r reads for ``response``, and whether the tokenizer adds its special tokens:
        the reward model's own chat template over the dialogue plus the response as the
        assistant turn when it has one; otherwise the dialogue as plain turns, then the response
        (never the policy's rendering of the prompt)."""
        if self.tok.chat_template:
            conv = [{"role": r, "content": c} for r, c in turns] + [{"role": "assistant", "content": response}]
            return str(self.tok.apply_chat_template(conv, tokenize=False)), False
        from grao_pipe.scoring.judge import dialogue_text

        if len(turns) == 1 and turns[0][0] == "user":
            return turns[0][1] + response, True  # a plain-text prompt, continued
        return f"{dialogue_text(turns)}\n\nAssistant: {response}", True

    def score(self, rows: ScoreInput) -> ScoreResult:
        dialogues = rows.dialogues()
        samples = [self.conversation(d, o) for d, o in zip(dialogues, rows.response.to_pylist(), strict=True)]
        refs = [self.conversation(d, y) for d, y in zip(dialogues, rows.reference.to_pylist(), strict=True)]
        # r(q, y) is computed once per group, not once per sample.
        uniq = list(dict.fromkeys(refs))
        todo = samples + uniq
        r = self.rewards([t for t, _ in todo], [a for _, a in todo])
        n = len(rows)
        r_ref = dict(zip(uniq, r[n:], strict=True))
        squash = math.tanh if self.cfg.squash == "tanh" else (lambda v: v)
        return ScoreResult(pa.array([squash(r[i] - r_ref[refs[i]]) for i in range(n)], pa.float64()))
