"""Model resolution: the embedded tiny model, and digests of model directories."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from grao_pipe.errors import InputError
from grao_pipe.storage.shards import content_sha256

# Files that decide what a policy computes: weights, tokenizer, chat template, configs.
_DIGEST_GLOBS = ("*.safetensors", "*.bin", "config.json", "generation_config.json",
                 "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                 "chat_template.*", "vocab.*", "merges.txt")


@dataclass(frozen=True)
class Policy:
    """A model that samples (or is trained): its content digest, and how to get it locally.
    Keys need only the digest; the directory is built or fetched when a stage loads it."""

    digest: str
    get_dir: Callable[[], Path]

    def local_dir(self) -> Path:
        return self.get_dir()


def policy_digest(model_dir: str | Path) -> str:
    """Content hash of a Hugging Face model directory (weights + tokenizer + chat template)."""
    root = Path(model_dir)
    if not (root / "config.json").is_file():
        raise InputError(f"model path {root} is not a Hugging Face model directory (no config.json)")
    h = hashlib.sha256()
    for p in sorted({p for g in _DIGEST_GLOBS for p in root.glob(g) if p.is_file()}):
        h.update(f"{p.name}\x00{content_sha256(p)}\n".encode())
    return h.hexdigest()[:32]
