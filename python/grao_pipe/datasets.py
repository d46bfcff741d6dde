"""Rollout datasets shared between teams: list, rollout cards, verification, export.

A dataset version is a finished generate or score directory. It is a plain Parquet dataset
(sidecars start with ``_``), so pyarrow.dataset, polars, DuckDB and Spark read it as is.
``export`` writes it for other tools: a ``datasets``-loadable directory with a dataset card
(``README.md`` with YAML front matter), or TRL's formats (preference, KTO, prompt-completion).
Reading a dataset never unpickles or executes anything: manifests are JSON, shards are Parquet,
and file names are confined to the dataset directory.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from grao_pipe.errors import DataError, InputError
from grao_pipe.manifests import Manifest
from grao_pipe.storage import StageDir, Workdir, atomic_write_bytes


def dataset_dirs(workdir: Workdir) -> list[StageDir]:
    """Every output directory of every dataset stage (finished or not)."""
    from grao_pipe.stages import STAGES

    return [d for stage in STAGES.values() if stage.dataset for d in workdir.versions(stage.name)]


def versions(workdir: Workdir) -> list[tuple[StageDir, Manifest]]:
    """The finished dataset versions, with their manifests (a malformed one is left out here;
    ``datasets list`` shows it as corrupt, ``verify`` reports it)."""
    return [(d, m) for d, m in manifests(workdir) if m is not None and not isinstance(m, DataError)]


def manifests(workdir: Workdir) -> list[tuple[StageDir, Manifest | DataError | None]]:
    out: list[tuple[StageDir, Manifest | DataError | None]] = []
    for d in dataset_dirs(workdir):
        try:
            out.append((d, d.manifest()))
        except DataError as e:
            out.append((d, e))
    return out


def find(workdir: Workdir, key_prefix: str) -> tuple[StageDir, Manifest]:
    hits = [(d, m) for d, m in versions(workdir) if m.key.startswith(key_prefix) or d.name.startswith(key_prefix)]
    if len(hits) != 1:
        what = "no dataset" if not hits else f"{len(hits)} datasets"
        raise InputError(f"{what} in {workdir.location} match key {key_prefix!r}; see 'grao-pipe datasets list'")
    return hits[0]


def _num(v: Any) -> float:
    return float(v) if v is not None else 0.0


def _quantiles(s: pl.Series) -> dict[str, float]:
    return {f"p{int(q * 100)}": _num(s.quantile(q)) for q in (0.1, 0.5, 0.9, 0.99)} | {"max": _num(s.max())}


def card(d: StageDir, manifest: Manifest) -> dict[str, Any]:
    """The rollout card: lineage plus reward and length distributions."""
    cfg, inputs = manifest.config, manifest.inputs
    cols = ["group_id", "response_token_ids", "policy_digest", "backend"]
    if manifest.stage == "score":
        cols += ["reward", "degenerate"]
    df = pl.from_arrow(d.read_table(manifest, cols))
    assert isinstance(df, pl.DataFrame)
    lengths = df["response_token_ids"].list.len()
    out: dict[str, Any] = {
        "stage": manifest.stage, "key": manifest.key, "created_at": manifest.created_at,
        "rows": df.height, "groups": df["group_id"].n_unique(),
        "lineage": {
            "prompt_set_sha256": inputs.prompts.sha256 if inputs.prompts else None,
            "policy_digest": sorted(set(df["policy_digest"].to_list())),
            # A LoRA round's policy is the round-1 base plus the adapter of the previous round.
            "lora_base_digest": inputs.lora_base,
            "sampler": cfg.get("generate", cfg) if manifest.stage == "generate" else {"generate_manifest": inputs.generate},
            "scorers": cfg.get("scorers") if manifest.stage == "score" else None,
        },
        "response_tokens": _quantiles(lengths),
    }
    imported = getattr(manifest.stats, "imported", None)
    if imported:  # generate.backend=import: where the rollouts came from
        out["import"] = imported
    if manifest.stage == "score":
        rewards = df["reward"].drop_nulls()
        out["reward"] = {"mean": _num(rewards.mean()), "invalid": int(df["reward"].null_count()),
                         "histogram": {str(k): int(v) for k, v in rewards.value_counts(sort=True).rows()}
                         if rewards.n_unique() <= 20 else _quantiles(rewards)}
        per_group = df.group_by("group_id").agg(pl.col("degenerate").first())
        out["degenerate_share"] = _num(per_group["degenerate"].mean())
    return out


# ---- dataset cards (the Hugging Face `datasets` README format) ----

_DTYPES = {pa.string(): "string", pa.large_string(): "string", pa.int32(): "int32", pa.int64(): "int64",
           pa.float32(): "float32", pa.float64(): "float64", pa.bool_(): "bool"}


def _feature(t: pa.DataType) -> dict[str, Any]:
    """One column's type in the dataset card's ``features`` YAML (what ``datasets`` reads)."""
    if t in _DTYPES:
        return {"dtype": _DTYPES[t]}
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        inner = t.value_type
        if pa.types.is_struct(inner):
            return {"list": [{"name": f.name, **_feature(f.type)} for f in inner]}
        return {"list": _DTYPES[inner]} if inner in _DTYPES else {"list": _feature(inner)}
    if pa.types.is_struct(t):
        return {"struct": [{"name": f.name, **_feature(f.type)} for f in t]}
    raise DataError(f"column type {t} has no dataset-card feature mapping")


def card_yaml(schema: pa.Schema, data_files: str, extra: dict[str, Any]) -> str:
    front = {
        "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": data_files}]}],
        "dataset_info": {"features": [{"name": f.name, **_feature(f.type)} for f in schema]},
        "tags": ["grao-pipe", "rollouts"],
        **extra,
    }
    return "---\n" + yaml.safe_dump(front, sort_keys=False) + "---\n"


def card_markdown(d: StageDir, manifest: Manifest, c: dict[str, Any], data_files: str = "shard-*.parquet",
                  schema: pa.Schema | None = None) -> str:
    """A dataset card: YAML front matter that ``datasets`` reads (configs, features), then the
    lineage and distributions of the rollout card."""
    if schema is None:
        schema = pq.read_schema(d.member(manifest.shards[0].name)) if manifest.shards else pa.schema([])
    head = card_yaml(schema, data_files, {"size_categories": [_size_category(manifest.rows)]})
    return (head + f"\n# grao-pipe {manifest.stage} dataset {manifest.key[:16]}\n\n"
            f"{manifest.rows} rows in {c['groups']} groups, made {manifest.created_at} by grao-pipe "
            f"{manifest.code_version} (stage `{manifest.stage}`, data contract v{manifest.schema_version}).\n\n"
            "One row per sample; `reference` is the prompt's reference answer y (the dataset's chosen answer), "
            "`reference_rejected` the dataset's rejected answer when it had one: neither is a sample.\n\n"
            "## Rollout card\n\n```json\n" + json.dumps(c, indent=2) + "\n```\n")


def _size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return name
    return "1M<n<10M" if n < 10_000_000 else "n>10M"


# ---- export ----


@dataclass(frozen=True)
class Exported:
    rows: int
    path: Path


def _trl_frame(df: pl.DataFrame, conversational: bool, columns: dict[str, pl.Expr]) -> pl.DataFrame:
    prompt = pl.col("prompt_messages") if conversational else pl.col("prompt")
    out = {"prompt": prompt}
    for name, expr in columns.items():
        out[name] = (pl.concat_list(pl.struct(role=pl.lit("assistant"), content=expr)) if conversational
                     and name in ("chosen", "rejected", "completion") else expr)
    return df.select(**out)


def _preference(df: pl.DataFrame, pairs: str) -> pl.DataFrame:
    """Rows (prompt, chosen, rejected, group_id). ``best-worst``: the group's highest- vs
    lowest-reward sample (groups without a reward spread give none); ``reference-sample``: the
    reference vs every sample the scorer judged strictly worse (R < 0); ``dataset``: the
    reference vs the dataset's rejected answer."""
    valid = df.filter(pl.col("reward").is_not_null())
    if pairs == "best-worst":
        ranked = valid.sort(["group_id", "reward", "sample_idx"], descending=[False, True, False])
        best = ranked.group_by("group_id", maintain_order=True).first()
        worst = ranked.group_by("group_id", maintain_order=True).last().select("group_id", rejected=pl.col("response"),
                                                                                worst=pl.col("reward"))
        joined = best.join(worst, on="group_id").filter(pl.col("reward") > pl.col("worst"))
        return joined.with_columns(chosen=pl.col("response"))
    if pairs == "reference-sample":
        return valid.filter(pl.col("reward") < 0).with_columns(chosen=pl.col("reference"), rejected=pl.col("response"))
    firsts = df.group_by("group_id", maintain_order=True).first().filter(pl.col("reference_rejected").is_not_null())
    return firsts.with_columns(chosen=pl.col("reference"), rejected=pl.col("reference_rejected"))


def export(d: StageDir, manifest: Manifest, fmt: str, out: Path, pairs: str = "best-worst") -> Exported:
    """Write ``manifest``'s dataset to ``out`` as ``fmt`` (see the CLI's ``datasets export``)."""
    if out.exists() and any(out.iterdir()):
        raise InputError(f"{out} exists and is not empty; choose a new --out directory")
    out.mkdir(parents=True, exist_ok=True)
    table = d.read_table(manifest)
    if fmt == "dataset":
        pq.write_table(table, out / "train.parquet", compression="zstd")
        atomic_write_bytes(out / "README.md", card_markdown(d, manifest, card(d, manifest), "train.parquet",
                                                            table.schema).encode())
        return Exported(table.num_rows, out)
    df = pl.from_arrow(table)
    assert isinstance(df, pl.DataFrame)
    if fmt in ("preference", "kto") and manifest.stage != "score":
        raise InputError(f"--format {fmt} needs rewards: export a score dataset (this one is {manifest.stage})")
    conversational = df["prompt_messages"].null_count() < df.height
    if fmt == "preference":
        rows = _preference(df, pairs)
        result = _trl_frame(rows, conversational, {"chosen": pl.col("chosen"), "rejected": pl.col("rejected")})
        result = result.with_columns(group_id=rows["group_id"])
    elif fmt == "kto":
        # Desirable: judged at least as good as the reference (R(o, y) >= 0).
        rows = df.filter(pl.col("reward").is_not_null())
        result = _trl_frame(rows, conversational, {"completion": pl.col("response"), "label": pl.col("reward") >= 0})
    else:  # prompt-completion: per group, the best sample when it beat the reference, else the reference
        if manifest.stage == "score":
            ranked = df.sort(["group_id", "reward", "sample_idx"], descending=[False, True, False], nulls_last=True)
            rows = ranked.group_by("group_id", maintain_order=True).first()
            completion = pl.when(pl.col("reward") > 0).then(pl.col("response")).otherwise(pl.col("reference"))
        else:
            rows = df.group_by("group_id", maintain_order=True).first()
            completion = pl.col("reference")
        result = _trl_frame(rows, conversational, {"completion": completion})
    arrow = result.to_arrow()
    pq.write_table(arrow, out / "train.parquet", compression="zstd")
    extra = {"tags": ["grao-pipe", "trl", fmt]}
    body = (f"\n# {fmt} export of grao-pipe {manifest.stage} dataset {manifest.key[:16]}\n\n"
            f"{arrow.num_rows} rows for TRL ({'conversational' if conversational else 'standard'} format)"
            + (f", pairs: {pairs}" if fmt == "preference" else "") + ".\n")
    atomic_write_bytes(out / "README.md", (card_yaml(arrow.schema, "train.parquet", extra) + body).encode())
    return Exported(arrow.num_rows, out)
