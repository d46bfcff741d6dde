"""Model resolution: the embedded tiny model, and digests of model directories."""

from __future__ import annotations

import hashlib
from pathlib import Path

from grao_pipe.errors import InputError

# Files that decide what a policy computes: weights, tokenizer, chat template, configs.
_DIGEST_GLOBS = ("*.safetensors", "*.bin", "config.json", "generation_config.json",
                 "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                 "chat_template.*", "vocab.*", "merges.txt")


def policy_digest(model_dir: str | Path) -> str:
    """Content hash of a Hugging Face model directory (weights + tokenizer + chat template)."""
    root = Path(model_dir)
    if not (root / "config.json").is_file():
        raise InputError(f"model path {root} is not a Hugging Face model directory (no config.json)")
    h = hashlib.sha256()
    files = sorted({p for g in _DIGEST_GLOBS for p in root.glob(g) if p.is_file()})
    for p in files:
        h.update(p.name.encode() + b"\x00")
        with open(p, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
    return h.hexdigest()[:32]
