"""A local transformers causal LM answering prompts greedily (the judge's ``hf`` backend)."""

from __future__ import annotations

from pathlib import Path

from grao_pipe.errors import InputError


class LocalChat:
    def __init__(self, path: Path, max_new_tokens: int = 16, batch_size: int = 16):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from grao_pipe._quiet import quiet_transformers

        quiet_transformers()
        if not (path / "config.json").is_file():
            raise InputError(f"judge model {path} is not a Hugging Face model directory")
        self._torch = torch
        self.tok = AutoTokenizer.from_pretrained(path)
        self.tok.padding_side = "left"
        if self.tok.pad_token_id is None:
            self.tok.pad_token = self.tok.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(path).eval()
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
            enc = self.tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
            with self._torch.no_grad():
                gen = self.model.generate(**enc, do_sample=False, max_new_tokens=self.max_new_tokens,
                                          pad_token_id=self.tok.pad_token_id)
            new = gen[:, enc["input_ids"].shape[1] :]
            out.extend(str(t) for t in self.tok.batch_decode(new, skip_special_tokens=True))
        return out
