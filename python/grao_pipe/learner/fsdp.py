"""The one place that wraps a model for FSDP2 (``fully_shard`` per decoder block, then root)."""

from __future__ import annotations

import torch
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise TypeError(f"{type(model).__name__}: expected a causal LM with .model.layers (Llama/Qwen style)")
    return list(layers)


def shard_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    # bf16 compute with fp32 gradient reduction on GPU; CPU (gloo) stays fp32.
    mp = (
        MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if device.type == "cuda"
        else MixedPrecisionPolicy()
    )
    for layer in decoder_layers(model):
        fully_shard(layer, mp_policy=mp)
    fully_shard(model, mp_policy=mp)
    return model
