"""GGUF import: a (quantized) GGUF file -> a Hugging Face model directory every backend reads.

transformers de-quantizes GGUF checkpoints when loading them but refuses to save them again
(``save_pretrained`` on a gguf-quantized model raises). The import rebuilds the same
architecture from the parsed config, copies the de-quantized weights in, and saves
safetensors in the chosen dtype with the tokenizer (chat template included) and generation
config. The directory is content-addressed: the same GGUF bytes and dtype always give the same
directory, built once and published atomically (temporary directory + rename), so concurrent
workers and re-runs share it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Literal

from grao_pipe.errors import ConfigError, InputError
from grao_pipe.hashing import digest
from grao_pipe.schemas import tmp_name
from grao_pipe.storage import content_sha256

GgufDtype = Literal["fp32", "bf16"]
DTYPES: tuple[GgufDtype, ...] = ("fp32", "bf16")
GGUF_MAGIC = b"GGUF"
# Bump when the import writes different files for the same GGUF bytes.
IMPORT_VERSION = 1
PROVENANCE = "gguf_import.json"
# Architectures transformers parses from GGUF that are not causal LMs the pipeline can train.
_NOT_CAUSAL = {"t5", "t5encoder", "umt5", "general", "tokenizer"}


def require_gguf_package() -> None:
    from grao_pipe.extras import require

    require("a .gguf model (model.path, grao-pipe models import)", "gguf", "torch", "transformers")


def check_gguf_file(path: Path) -> None:
    if not path.is_file():
        raise InputError(f"GGUF file {path} does not exist")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise InputError(f"{path} is not a GGUF file (it does not start with the GGUF magic bytes); "
                         "model.path takes a Hugging Face model directory or a .gguf file")


def gguf_architecture(path: Path) -> str:
    """``general.architecture`` from the file's metadata (the tensors are not read)."""
    from gguf import GGUFReader

    field = GGUFReader(str(path)).fields.get("general.architecture")
    if field is None:
        raise InputError(f"{path}: GGUF metadata has no general.architecture; cannot tell what model it holds")
    return bytes(field.parts[field.data[0]]).decode("utf-8", errors="replace")


def check_architecture(path: Path, arch: str) -> None:
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    supported = sorted(set(GGUF_SUPPORTED_ARCHITECTURES) - _NOT_CAUSAL)
    normalised = arch.replace("-", "_")
    normalised = {"qwen2moe": "qwen2_moe", "qwen3moe": "qwen3_moe"}.get(normalised, normalised)
    if normalised in _NOT_CAUSAL or normalised not in supported:
        raise InputError(f"{path}: GGUF architecture {arch!r} cannot be imported as a causal LM by this "
                         f"transformers version (supported: {', '.join(supported)}); convert the original "
                         "checkpoint to a Hugging Face directory instead")


def import_key(path: Path, dtype: GgufDtype) -> str:
    """Content address of an import: the GGUF bytes, the dtype and the importer's version."""
    return digest({"gguf_sha256": content_sha256(path), "dtype": dtype, "v": IMPORT_VERSION})[:16]


def import_dir(path: Path, out_root: Path, dtype: GgufDtype) -> Path:
    """Named by content only (the source's name is in its gguf_import.json)."""
    return out_root / f"gguf-{dtype}-{import_key(path, dtype)}"


def import_gguf(gguf_file: str | Path, out_root: str | Path, dtype: GgufDtype = "fp32") -> Path:
    """The Hugging Face directory of ``gguf_file`` under ``out_root``, importing it on first use.

    ``fp32`` keeps the de-quantized values exactly; ``bf16`` halves the size (rounds them)."""
    if dtype not in DTYPES:
        raise ConfigError(f"GGUF import dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    path = Path(gguf_file)
    check_gguf_file(path)
    out = import_dir(path, Path(out_root), dtype)
    if (out / PROVENANCE).is_file():
        return out
    require_gguf_package()
    check_architecture(path, gguf_architecture(path))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(tmp_name(out.name))
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _convert(path, tmp, dtype)
        (tmp / PROVENANCE).write_text(json.dumps({
            "source": path.name, "gguf_sha256": content_sha256(path), "dtype": dtype, "import_version": IMPORT_VERSION,
        }, indent=2) + "\n")
        tmp.replace(out)  # atomic: a half-written import is never visible under the final name
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (out / PROVENANCE).is_file():
            raise
        # Another process (a --shard worker) published the same import first: use it.
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _convert(path: Path, out: Path, dtype: GgufDtype) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from grao_pipe.hf import quiet

    quiet()
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    folder, name = str(path.parent), path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    except ValueError as e:  # transformers' "architecture ... is not supported yet" and kin
        raise InputError(f"{path}: transformers cannot load this GGUF file ({e})") from None
    # The loaded model is de-quantized but flagged as quantized, which save_pretrained refuses:
    # rebuild the architecture from its config without the quantization entry.
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch_dtype
    plain = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
    result = plain.load_state_dict(quantized.state_dict(), strict=False)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if result.unexpected_keys or set(result.missing_keys) - tied:
        raise InputError(f"{path}: GGUF tensors do not match the {type(plain).__name__} architecture "
                         f"(missing {result.missing_keys}, unexpected {result.unexpected_keys})")
    plain.generation_config = quantized.generation_config
    del quantized
    plain.save_pretrained(out, max_shard_size="4GB")
    tokenizer.save_pretrained(out)
