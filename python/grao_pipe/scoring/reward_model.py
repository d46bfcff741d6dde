"""Scalar reward model: a transformers sequence classifier r(q, text); R(o, y) = r(q, o) - r(q, y).

r reads the prompt's dialogue and the answer in the reward model's own chat template (the
answer as the assistant turn), never the policy's rendering of the prompt.

Batches are formed by length (sorted), each sequence is right-padded and read at its own last
token, so a sequence's score does not depend on which batch it landed in.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from grao_pipe.config import RewardModelScorer
from grao_pipe.errors import InputError
from grao_pipe.remote import local_input
from grao_pipe.scoring.base import Messages, ScoreResult
from grao_pipe.scoring.judge import as_turns, dialogue_text


class RewardModel:
    def __init__(self, cfg: RewardModelScorer):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from grao_pipe._quiet import quiet_transformers

        quiet_transformers()
        path = local_input(cfg.path)
        if not (path / "config.json").is_file():
            raise InputError(f"score.scorers[{cfg.name}].path: {cfg.path} is not a Hugging Face model directory")
        self.cfg = cfg
        self.name = cfg.name
        self._torch = torch
        self.tok = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForSequenceClassification.from_pretrained(path).eval()

    def conversation_text(self, prompt: str, messages: Messages, response: str) -> tuple[str, bool]:
        """The text r reads for ``response`` to a prompt, and whether the tokenizer should add its
        special tokens: the reward model's own chat template over the dialogue plus the response
        as the assistant turn when it has one (a plain-text prompt is one user turn); otherwise
        the dialogue as plain turns followed by the response (never the policy's rendering)."""
        if self.tok.chat_template:
            turns = as_turns(messages) or [("user", prompt)]
            conv = [{"role": r, "content": c} for r, c in turns] + [{"role": "assistant", "content": response}]
            return str(self.tok.apply_chat_template(conv, tokenize=False)), False
        if messages:
            return f"{dialogue_text(prompt, messages)}\n\nAssistant: {response}", True
        return prompt + response, True

    def rewards(self, texts: list[str], add_special_tokens: bool | list[bool] = True) -> list[float]:
        """r(text) for each text, batched by length. Texts rendered with a chat template already
        hold their special tokens: pass False for them."""
        torch = self._torch
        special = add_special_tokens if isinstance(add_special_tokens, list) else [add_special_tokens] * len(texts)
        ids = [self.tok(t, add_special_tokens=a, truncation=True, max_length=self.cfg.max_length)["input_ids"]
               for t, a in zip(texts, special, strict=True)]
        order = sorted(range(len(ids)), key=lambda i: (len(ids[i]), i))
        out = [0.0] * len(ids)
        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else 0
        for b in range(0, len(order), self.cfg.batch_size):
            idx = order[b : b + self.cfg.batch_size]
            width = max(len(ids[i]) for i in idx)
            x = torch.full((len(idx), width), pad, dtype=torch.long)
            mask = torch.zeros(len(idx), width, dtype=torch.long)
            for r, i in enumerate(idx):
                x[r, : len(ids[i])] = torch.tensor(ids[i])
                mask[r, : len(ids[i])] = 1
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

    def score(self, prompts: list[str], responses: list[str], references: list[str],
              messages: Sequence[Messages] | None = None) -> ScoreResult:
        dialogues = messages if messages is not None else [None] * len(prompts)
        samples = [self.conversation_text(p, m, o) for p, m, o in zip(prompts, dialogues, responses, strict=True)]
        refs = [self.conversation_text(p, m, y) for p, m, y in zip(prompts, dialogues, references, strict=True)]
        # r(q, y) is computed once per group, not once per sample.
        uniq = list(dict.fromkeys(refs))
        todo = samples + uniq
        r = self.rewards([t for t, _ in todo], [a for _, a in todo])
        n = len(prompts)
        r_ref = dict(zip(uniq, r[n:], strict=True))
        squash = math.tanh if self.cfg.squash == "tanh" else (lambda v: v)
        return ScoreResult([squash(r[i] - r_ref[refs[i]]) for i in range(n)])
