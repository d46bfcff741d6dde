"""The tiny pipeline config every test starts from (importable: conftest modules are not)."""

from __future__ import annotations

TINY = {
    "name": "tiny",
    "data": {"prompts": "builtin:arith", "limit": 12},
    "generate": {"num_samples": 4, "max_new_tokens": 3, "batch_size": 6, "prompts_per_shard": 6},
    "train": {"lr": 1e-3, "groups_per_step": 4, "epochs": 1, "nproc": 2},
}


def merge(base: dict, extra: dict) -> dict:
    """``base`` with ``extra`` merged in, section by section."""
    out = dict(base)
    for k, v in extra.items():
        out[k] = merge(out.get(k, {}), v) if isinstance(v, dict) else v
    return out
