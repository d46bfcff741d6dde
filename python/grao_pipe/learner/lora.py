"""LoRA adapters on a frozen base (``train.lora``), built with ``peft``.

The learner injects the adapters into the causal LM before it is wrapped for log-probs and
sharded: ``fully_shard`` then shards each decoder block's frozen base weights and its adapter
weights together (FSDP2 keeps frozen and trainable parameters in one module; only the
trainable ones get gradients and are reduce-scattered), as torchtune's distributed LoRA recipe
does. Every rank seeds the same generator before the injection, so the adapters start equal on
every rank (B = 0: the policy starts as the base, exactly).

Rounds continue one adapter on the round-1 base: round r > 1 loads round r-1's ``adapter/``.
Exports (rank 0, ``export``): ``adapter/`` (PEFT's format: ``adapter_config.json`` +
``adapter_model.safetensors``, fp32) always, and ``model/`` (the adapter merged into the base,
in the export dtype) unless ``train.export=adapter``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from grao_pipe.config import LoraConfig, TrainConfig
from grao_pipe.faults import kill_point
from grao_pipe.models import ADAPTER_CONFIG, ADAPTER_DIR, ADAPTER_WEIGHTS


def peft_config(cfg: LoraConfig) -> Any:
    from peft import LoraConfig as PeftLoraConfig

    targets: Any = cfg.target_modules if isinstance(cfg.target_modules, str) else list(cfg.target_modules)
    return PeftLoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets,
                          bias="none", task_type="CAUSAL_LM")


def is_adapter_param(name: str) -> bool:
    return ".lora_A." in name or ".lora_B." in name


def apply(lm: nn.Module, cfg: LoraConfig, adapter_dir: Path | None = None) -> nn.Module:
    """``lm`` with LoRA adapters injected in place and every base parameter frozen; the adapter
    weights of ``adapter_dir`` (the previous round's) when given, else PEFT's init (B = 0)."""
    from peft import inject_adapter_in_model

    lm = inject_adapter_in_model(peft_config(cfg), lm)
    for name, p in lm.named_parameters():
        p.requires_grad_(is_adapter_param(name))
    if not any(p.requires_grad for p in lm.parameters()):
        raise ValueError(f"train.lora.target_modules={cfg.target_modules!r} matches no module of the model")
    if adapter_dir is not None:
        load_adapter(lm, adapter_dir, cfg)
    return lm


def _module_key(peft_key: str) -> str:
    """A key of ``adapter_model.safetensors`` (PeftModel-relative, adapter name left out) as a key
    of the injected causal LM: ``base_model.model.X.lora_A.weight`` -> ``X.lora_A.default.weight``."""
    key = peft_key.removeprefix("base_model.model.")
    for part in ("lora_A", "lora_B"):
        key = key.replace(f".{part}.weight", f".{part}.default.weight")
    return key


def load_adapter(lm: nn.Module, adapter_dir: Path, cfg: LoraConfig) -> None:
    """Load a PEFT adapter directory into ``lm``'s injected adapters (all of them, nothing else)."""
    from safetensors.torch import load_file

    saved = json.loads((adapter_dir / ADAPTER_CONFIG).read_text())
    want = peft_config(cfg)
    if int(saved.get("r", -1)) != want.r or saved.get("lora_alpha") != want.lora_alpha:
        raise ValueError(f"{adapter_dir}: adapter of rank {saved.get('r')}, alpha {saved.get('lora_alpha')}; "
                         f"train.lora asks for rank {want.r}, alpha {want.lora_alpha}")
    state = {_module_key(k): v for k, v in load_file(str(adapter_dir / ADAPTER_WEIGHTS)).items()}
    own = {n for n, _ in lm.named_parameters() if is_adapter_param(n)}
    if set(state) != own:
        raise ValueError(f"{adapter_dir}: its adapter weights do not match train.lora's modules "
                         f"(missing {sorted(own - set(state))[:3]}, unexpected {sorted(set(state) - own)[:3]})")
    lm.load_state_dict(state, strict=False)


def trainable(model: nn.Module) -> list[nn.Parameter]:
    """What the optimizer holds: the adapters (and PPO's value head) under LoRA, else everything."""
    return [p for p in model.parameters() if p.requires_grad]


def export(state: dict[str, Any], base_dir: Path, cfg: TrainConfig, dtype: torch.dtype, out: Path,
           tokenizer: Any) -> None:
    """Rank 0: write ``adapter/`` and, unless ``train.export=adapter``, the merged ``model/``, each
    through a temporary directory renamed when complete. ``state``: the learner's full trainable
    state (adapter weights, plus learner-only heads that are left out)."""
    from peft import get_peft_model, get_peft_model_state_dict
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    assert cfg.lora is not None
    # The base from disk (it is frozen: the learner's copy is the same), eager attention (the
    # export holds only weights), the trained adapter loaded into it.
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32, local_files_only=True,
                                                attn_implementation="eager")
    peft_model = get_peft_model(base, peft_config(cfg.lora))
    adapter = {k: v for k, v in state.items() if is_adapter_param(k)}
    missing, unexpected = peft_model.base_model.model.load_state_dict(adapter, strict=False)
    lost = [k for k in missing if is_adapter_param(k)]
    if lost or unexpected:
        raise RuntimeError(f"LoRA export: adapter weights missing {lost[:3]}, unexpected {unexpected[:3]}")

    tmp = out / f".tmp-{ADAPTER_DIR}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    # PEFT's own format, written with its key mapping; the config holds no path of this machine
    # (the base is named by the train manifest's digests, not by a path).
    saved = peft_model.peft_config["default"]
    saved.base_model_name_or_path = None
    if not isinstance(saved.target_modules, str):  # a set once resolved: fix the order (the digest)
        saved.target_modules = sorted(saved.target_modules)
    saved.save_pretrained(str(tmp))
    weights = get_peft_model_state_dict(peft_model)
    save_file({k: v.detach().contiguous() for k, v in weights.items()}, str(tmp / ADAPTER_WEIGHTS),
              metadata={"format": "pt"})
    kill_point("train.export.adapter")
    shutil.rmtree(out / ADAPTER_DIR, ignore_errors=True)  # a killed export's (same content)
    tmp.rename(out / ADAPTER_DIR)

    if cfg.export == "adapter":
        return
    merged = peft_model.merge_and_unload()
    merged.to(dtype)
    tmp = out / ".tmp-model"
    shutil.rmtree(tmp, ignore_errors=True)
    merged.save_pretrained(tmp, max_shard_size="4GB")
    kill_point("train.export")
    tokenizer.save_pretrained(tmp)
    tmp.rename(out / "model")

