"""A local transformers causal LM answering prompts greedily (the judge's ``hf`` backend)."""

from __future__ import annotations

from pathlib import Path


class LocalChat:
    def __init__(self, path: Path, max_new_tokens: int = 16, batch_size: int = 16):
        import torch

        from grao_pipe import hf

        self._torch = torch
        self.tok = hf.load_tokenizer(path, padding_side="left", purpose="the local judge (backend: hf)")
        self.model = hf.load_model(path, purpose="the local judge (backend: hf)")
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size

    def _render(self, prompt: str) -> str:
        if self.tok.chat_template:
            return str(self.tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                    add_generation_prompt=True))
        return prompt

    def complete(self, prompts: list[str]) -> list[str]:
        out: list[str] = []
        for i in range(0, len(prompts), self.batch_size):
            texts = [self._render(p) for p in prompts[i : i + self.batch_size]]
            enc = self.tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.model.device)
            with self._torch.no_grad():
                gen = self.model.generate(**enc, do_sample=False, max_new_tokens=self.max_new_tokens,
                                          pad_token_id=self.tok.pad_token_id)
            new = gen[:, enc["input_ids"].shape[1] :]
            out.extend(str(t) for t in self.tok.batch_decode(new, skip_special_tokens=True))
        return out
