"""Model resolution: the embedded tiny model, and digests of model directories."""

from __future__ import annotations

import hashlib
from pathlib import Path

from grao_pipe.errors import InputError
from grao_pipe.storage.shards import content_sha256

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
    for p in sorted({p for g in _DIGEST_GLOBS for p in root.glob(g) if p.is_file()}):
        h.update(f"{p.name}\x00{content_sha256(p)}\n".encode())
    return h.hexdigest()[:32]


# A LoRA adapter directory in PEFT's format (what the train stage exports under adapter/).
ADAPTER_DIR = "adapter"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def is_adapter_dir(path: str | Path) -> bool:
    return (Path(path) / ADAPTER_CONFIG).is_file()


def adapter_digest(adapter_dir: str | Path) -> str:
    """Content hash of a PEFT adapter directory (its config and weights)."""
    root = Path(adapter_dir)
    if not is_adapter_dir(root) or not (root / ADAPTER_WEIGHTS).is_file():
        raise InputError(f"{root} is not a LoRA adapter directory ({ADAPTER_CONFIG} + {ADAPTER_WEIGHTS})")
    h = hashlib.sha256()
    for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
        h.update(f"{name}\x00{content_sha256(root / name)}\n".encode())
    return h.hexdigest()[:32]


def lora_policy_digest(base_digest: str, adapter_sha: str) -> str:
    """The digest of a policy that is a base model plus a LoRA adapter."""
    h = hashlib.sha256(f"lora\x00{base_digest}\x00{adapter_sha}".encode())
    return h.hexdigest()[:32]
