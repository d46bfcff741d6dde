"""The policy's tokenizer: renders prompts (chat template) and tokenizes, for every backend."""

from __future__ import annotations

import functools
from pathlib import Path

from grao_pipe.prompts import Prompt


class PolicyTokenizer:
    def __init__(self, model_dir: Path | str, trust_remote_code: bool = False):
        from grao_pipe.hf import load_tokenizer

        self.tok = load_tokenizer(Path(model_dir), trust_remote_code=trust_remote_code)
        self.eos_id: int = self.tok.eos_token_id
        self.pad_id: int = self.tok.pad_token_id
        cfg_path = Path(model_dir) / "config.json"
        import json

        from grao_pipe.hf import broken_model

        try:
            self.context = int(json.loads(cfg_path.read_text()).get("max_position_embeddings", 1 << 30))
            self.vocab_size = int(json.loads(cfg_path.read_text()).get("vocab_size") or len(self.tok))
        except (OSError, ValueError, TypeError, AttributeError) as e:
            raise broken_model(Path(model_dir), e) from None

    @functools.cached_property
    def max_token_chars(self) -> int:
        """The most characters one token of the vocabulary spells (at least 1)."""
        return max((len(t) for t in self.tok.get_vocab()), default=1) or 1

    def render(self, prompt: Prompt) -> str:
        if prompt.messages is not None:
            msgs = [{"role": r, "content": c} for r, c in prompt.messages]
            if self.tok.chat_template:
                return str(self.tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True))
            return "".join(f"{r}: {c}\n" for r, c in prompt.messages) + "assistant: "
        return prompt.text or ""

    def encode(self, text: str) -> list[int]:
        return list(self.tok(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: list[int]) -> str:
        return str(self.tok.decode(ids, skip_special_tokens=True))

    def reference_ids(self, reference: str) -> list[int]:
        return [*self.encode(reference), self.eos_id]
