"""Rollout datasets shared between teams: list, rollout cards, verification.

A dataset version is a finished generate or score directory (one with a manifest). Reading one
never unpickles or executes anything: manifests are JSON, shards are Parquet, and shard names
are confined to the dataset directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl

from grao_pipe.errors import InputError
from grao_pipe.remote import subdirectories
from grao_pipe.store import Manifest, read_manifest, read_stage_table

DATASET_STAGES = ("generate", "score")


def versions(workdir: Path) -> list[tuple[Path, Manifest]]:
    out = []
    for stage in DATASET_STAGES:
        for d in subdirectories(workdir / stage):
            m = read_manifest(d)
            if m is not None:
                out.append((d, m))
    return out


def find(workdir: Path, key_prefix: str) -> tuple[Path, Manifest]:
    hits = [(d, m) for d, m in versions(workdir) if m.key.startswith(key_prefix) or d.name.startswith(key_prefix)]
    if len(hits) != 1:
        what = "no dataset" if not hits else f"{len(hits)} datasets"
        raise InputError(f"{what} in {workdir} match key {key_prefix!r}; see 'grao-pipe datasets list'")
    return hits[0]


def _num(v: Any) -> float:
    return float(v) if v is not None else 0.0


def _quantiles(s: pl.Series) -> dict[str, float]:
    return {f"p{int(q * 100)}": _num(s.quantile(q)) for q in (0.1, 0.5, 0.9, 0.99)} | {"max": _num(s.max())}


def card(directory: Path, manifest: Manifest) -> dict[str, Any]:
    """The rollout card: lineage plus reward and length distributions."""
    cfg, inputs = manifest.data["config"], manifest.data["inputs"]
    cols = ["group_id", "response_token_ids", "policy_digest", "backend"]
    if manifest.stage == "score":
        cols += ["reward", "degenerate"]
    df = pl.from_arrow(read_stage_table(directory, manifest, cols))
    assert isinstance(df, pl.DataFrame)
    lengths = df["response_token_ids"].list.len()
    out: dict[str, Any] = {
        "stage": manifest.stage, "key": manifest.key, "created_at": manifest.data["created_at"],
        "rows": df.height, "groups": df["group_id"].n_unique(),
        "lineage": {
            "prompt_set_sha256": (inputs.get("prompts") or {}).get("sha256"),
            "policy_digest": sorted(set(df["policy_digest"].to_list())),
            "sampler": cfg.get("generate", cfg) if manifest.stage == "generate" else {"generate_manifest": inputs.get("generate")},
            "scorers": cfg.get("scorers") if manifest.stage == "score" else None,
        },
        "response_tokens": _quantiles(lengths),
    }
    if manifest.stage == "score":
        rewards = df["reward"].drop_nulls()
        out["reward"] = {"mean": _num(rewards.mean()), "invalid": int(df["reward"].null_count()),
                         "histogram": {str(k): int(v) for k, v in rewards.value_counts(sort=True).rows()}
                         if rewards.n_unique() <= 20 else _quantiles(rewards)}
        per_group = df.group_by("group_id").agg(pl.col("degenerate").first())
        out["degenerate_share"] = _num(per_group["degenerate"].mean())
    return out
