"""Model resolution: the embedded tiny model, and digests of model directories."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from grao_pipe.errors import DataError, InputError
from grao_pipe.storage.shards import content_sha256

# Files that decide what a policy computes: weights, tokenizer, chat template, configs.
_DIGEST_GLOBS = ("*.safetensors", "*.bin", "config.json", "generation_config.json",
                 "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                 "chat_template.*", "vocab.*", "merges.txt")


@dataclass(frozen=True)
class Policy:
    """A model that samples (or is trained): its content digest, and how to get it locally.
    Keys need only the digest; the directory is built or fetched when a stage loads it.

    A LoRA round's export (``train.lora``) is also ``base`` + the adapter directory
    ``get_adapter``; ``get_dir`` is its merged model, None when only the adapter was exported.
    ``serve_adapter`` (``train.export=both``): engines that serve adapters (vllm, openai) sample
    from base + adapter even though a merged model exists; the hf backend loads the merged one.
    """

    digest: str
    get_dir: Callable[[], Path] | None
    base: Policy | None = None
    get_adapter: Callable[[], Path] | None = None
    serve_adapter: bool = False

    def local_dir(self) -> Path:
        """A whole Hugging Face model directory (a merged export)."""
        if self.get_dir is None:
            raise DataError("this policy is a LoRA adapter without a merged model (train.export=adapter); "
                            "load it as base + adapter")
        return self.get_dir()

    def tokenizer_dir(self) -> Path:
        """A directory with the policy's tokenizer (an adapter leaves the base's unchanged)."""
        return self.base.tokenizer_dir() if self.get_dir is None and self.base is not None else self.local_dir()

    def for_backend(self, backend: str) -> tuple[Path, Path | None]:
        """(model directory, adapter directory or None) that a sampler of ``backend`` loads."""
        if self.get_adapter is not None and self.base is not None and (
                self.get_dir is None or (backend != "hf" and self.serve_adapter)):
            return self.base.local_dir(), self.get_adapter()
        return self.local_dir(), None


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
