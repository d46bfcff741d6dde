"""Loading Hugging Face models and padding token batches: one helper for every consumer (the
``hf`` sampler, the local judge, the reward model, the reference model).

Models load from local directories only (no hub access at run time), in eval mode, on the GPU
when there is one (bf16) and on the CPU otherwise (fp32). ``trust_remote_code`` runs Python files
shipped with the model: it is warned about loudly, naming them.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from grao_pipe.errors import InputError
from grao_pipe.extras import require

if TYPE_CHECKING:
    import torch


def quiet() -> None:
    """Keep library chatter (warnings, progress bars) out of stage output."""
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


def check_model_dir(path: Path, what: str) -> None:
    if not (path / "config.json").is_file():
        raise InputError(f"{what} {path} is not a Hugging Face model directory (no config.json); point it at "
                         "a directory saved with save_pretrained, or a .gguf file for model.path")


def broken_model(path: Path, e: Exception) -> InputError:
    reason = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
    return InputError(f"model {path} cannot be loaded ({type(e).__name__}: {reason}); the directory is incomplete "
                      "or damaged (config.json, weights, tokenizer files): re-save or re-download it")


_WARNED: set[Path] = set()


def warn_remote_code(path: Path) -> None:
    """``trust_remote_code`` executes the model's own Python: say so, and which files (once a path)."""
    if path in _WARNED:
        return
    _WARNED.add(path)
    files = sorted(p.name for p in path.glob("*.py"))
    listed = ", ".join(files) if files else "none found in the directory (the config may name hub code)"
    print(f"WARNING: trust_remote_code=true: loading {path} runs Python code shipped with the model "
          f"({listed}) with your permissions. Only use it for models whose code you have read.", file=sys.stderr)


def device() -> torch.device:
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_tokenizer(path: Path, *, padding_side: Literal["left", "right"] = "right", trust_remote_code: bool = False,
                   purpose: str = "the policy tokenizer") -> Any:
    """A tokenizer with a pad token (EOS when it has none)."""
    require(purpose, "transformers")
    from transformers import AutoTokenizer

    quiet()
    check_model_dir(path, "model")
    if trust_remote_code:
        warn_remote_code(path)
    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code, local_files_only=True)
    except Exception as e:  # a broken directory: config.json '{', tokenizer files missing or cut short
        raise broken_model(path, e) from None
    tok.padding_side = padding_side
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(path: Path, *, kind: Literal["causal_lm", "sequence_classifier"] = "causal_lm",
               trust_remote_code: bool = False, purpose: str = "a local model", dtype: Any = None) -> Any:
    """A model in eval mode on ``device()``: bf16 on GPU, fp32 on CPU unless ``dtype`` says."""
    require(purpose, "torch", "transformers")
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    quiet()
    check_model_dir(path, purpose)
    if trust_remote_code:
        warn_remote_code(path)
    dev = device()
    if dtype is None:
        dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    cls = AutoModelForCausalLM if kind == "causal_lm" else AutoModelForSequenceClassification
    try:
        model = cls.from_pretrained(path, dtype=dtype, trust_remote_code=trust_remote_code, local_files_only=True)
    except Exception as e:  # weights missing or truncated, a config that does not parse
        raise broken_model(path, e) from None
    return model.to(dev).eval()  # type: ignore[arg-type]


def merge_adapter(model: Any, adapter_dir: Path) -> Any:
    """``model`` with a LoRA adapter (PEFT format: adapter_config.json + safetensors) merged into
    its weights: sampling then costs what the base costs."""
    require(f"the LoRA adapter {adapter_dir}", "peft")
    from peft import PeftModel

    merged = PeftModel.from_pretrained(model, str(adapter_dir), local_files_only=True).merge_and_unload()
    return merged.eval()


def pad(seqs: list[list[int]], pad_id: int, side: Literal["left", "right"] = "right") -> tuple[torch.Tensor, torch.Tensor]:
    """``[N, T]`` token ids and attention mask for sequences of different lengths."""
    import numpy as np
    import torch

    width = max((len(s) for s in seqs), default=0)
    ids = np.full((len(seqs), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(seqs), width), dtype=np.int64)
    for i, s in enumerate(seqs):
        cols = slice(width - len(s), width) if side == "left" else slice(0, len(s))
        ids[i, cols] = s
        mask[i, cols] = 1
    return torch.from_numpy(ids), torch.from_numpy(mask)
