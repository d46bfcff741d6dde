"""Rollout datasets shared between teams: list, rollout cards, verification, export.

A dataset version is a finished generate or score directory. It is a plain Parquet dataset
(sidecars start with ``_``), so pyarrow.dataset, polars, DuckDB and Spark read it as is.
``export`` writes it for other tools: a ``datasets``-loadable directory with a dataset card
(``README.md`` with YAML front matter), or TRL's formats (preference, KTO, prompt-completion).
Reading a dataset never unpickles or executes anything: manifests are JSON, shards are Parquet,
and file names are confined to the dataset directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from grao_pipe.errors import DataError, InputError
from grao_pipe.faults import kill_point
from grao_pipe.manifests import Manifest
from grao_pipe.storage import StageDir, Workdir


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


def lineage(workdir: Workdir, manifest: Manifest) -> dict[str, Any]:
    """Where a dataset comes from: the prompt set (its location and sha256), the model that
    sampled it (its digest) and, for a score dataset, its scorers and the generate dataset it
    scored (found in ``workdir`` by the fingerprint its manifest recorded)."""
    gen: Manifest | None = manifest
    out: dict[str, Any] = {}
    if manifest.stage == "score":
        fp = manifest.inputs.generate
        gen = next((m for _, m in versions(workdir) if m.stage == "generate" and m.fingerprint == fp), None)
        scorers = manifest.config.get("scorers") or []
        out["scorers"] = [{k: v for k, v in s.items() if k in ("kind", "name", "function", "model", "path", "backend",
                                                                 "base_url", "criterion", "weight")}
                          for s in scorers if isinstance(s, dict)]
        out["generate_key"] = gen.key if gen is not None else None
        out["scorer_sources"] = manifest.sources.get("scorers")
    prompts = gen.inputs.prompts if gen is not None else None
    sources = gen.sources if gen is not None else {}
    return {"prompt_set": sources.get("prompts"), "prompt_set_sha256": prompts.sha256 if prompts else None,
            "model": sources.get("model"), "model_digest": gen.inputs.model if gen is not None else None,
            **out}


def judge_figures(d: StageDir, manifest: Manifest) -> dict[str, Any]:
    """Per judge scorer of a score dataset, from its kept verdicts (``judge_<name>_*`` columns):
    the parse rate, and the position bias: the share of parsed verdicts where the text shown
    first wins (0.5 for a judge without bias when both orders are asked; with both orders, also
    how often the two orders agree)."""
    from grao_pipe.schemas import judge_column

    present = set(pq.read_schema(d.member(manifest.shards[0].name)).names) if manifest.shards else set()
    out: dict[str, Any] = {}
    for sc in manifest.config.get("scorers") or []:
        if not isinstance(sc, dict) or sc.get("kind") != "judge":
            continue
        name = sc.get("name")
        fwd, swp = judge_column(str(name), "verdict"), judge_column(str(name), "verdict_swapped")
        if fwd not in present:
            out[str(name)] = {"verdicts": "not kept (scored by an older release)"}
            continue
        df = pl.from_arrow(d.read_table(manifest, [fwd, swp]))
        assert isinstance(df, pl.DataFrame)
        asked = [df[fwd]] + ([df[swp]] if df[swp].null_count() < df.height else [])
        verdicts = pl.concat(asked)
        parsed = verdicts.drop_nulls()
        fig: dict[str, Any] = {
            "answers": verdicts.len(), "parsed": parsed.len(),
            "parse_rate": parsed.len() / max(verdicts.len(), 1),
            "first_wins": _num((parsed == 1).mean()) if parsed.len() else None,
            "second_wins": _num((parsed == -1).mean()) if parsed.len() else None,
            "ties": _num((parsed == 0).mean()) if parsed.len() else None,
        }
        if len(asked) == 2:
            both = df.drop_nulls([fwd, swp])
            fig["orders_agree"] = _num((both[fwd] == -both[swp]).mean()) if both.height else None
        out[str(name)] = fig
    return out


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
    out["lineage"] |= lineage(d.workdir, manifest)
    imported = getattr(manifest.stats, "imported", None)
    if imported:  # generate.backend=import: where the rollouts came from
        out["import"] = imported
    if manifest.stage == "score":
        if judges := judge_figures(d, manifest):
            out["judges"] = judges
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

KTO_THRESHOLD = 0.0  # default: desirable = judged at least as good as the reference, R(o, y) >= 0


@dataclass(frozen=True)
class Exported:
    rows: int
    path: Path
    warnings: tuple[str, ...] = ()


def _prompt_messages() -> pl.Expr:
    """The chat prompt without empty system turns (``system_prompt: none`` leaves one; TRL would
    render it as an empty system block)."""
    m = pl.element()
    empty_system = (m.struct.field("role") == "system") & (m.struct.field("content").str.strip_chars() == "")
    return pl.col("prompt_messages").list.eval(m.filter(~empty_system))


def _trl_frame(df: pl.DataFrame, conversational: bool, columns: dict[str, pl.Expr]) -> pl.DataFrame:
    prompt = _prompt_messages() if conversational else pl.col("prompt")
    out = {"prompt": prompt}
    for name, expr in columns.items():
        out[name] = (pl.concat_list(pl.struct(role=pl.lit("assistant"), content=expr)) if conversational
                     and name in ("chosen", "rejected", "completion") else expr)
    return df.select(**out)


def _complete(keep_truncated: bool) -> pl.Expr:
    """Rows a chosen answer or completion may come from: finished samples (``finish_reason``
    stop), unless truncated ones are kept (their ``finish_reason`` column marks them)."""
    return pl.lit(True) if keep_truncated else pl.col("finish_reason") != "length"


def _preference(df: pl.DataFrame, pairs: str, keep_truncated: bool = False) -> pl.DataFrame:
    """Rows (prompt, chosen, rejected, group_id, chosen/rejected finish reasons).
    ``best-worst``: the group's highest-reward finished sample vs its lowest-reward sample
    (groups without a reward spread give none); ``reference-sample``: the reference vs every
    sample the scorer judged strictly worse (R < 0); ``dataset``: the reference vs the dataset's
    rejected answer. References and the dataset's answers are not samples: their finish reason is null."""
    valid = df.filter(pl.col("reward").is_not_null())
    null = pl.lit(None, pl.String)
    if pairs == "best-worst":
        ranked = valid.sort(["group_id", "reward", "sample_idx"], descending=[False, True, False])
        best = ranked.filter(_complete(keep_truncated)).group_by("group_id", maintain_order=True).first()
        worst = ranked.group_by("group_id", maintain_order=True).last().select(
            "group_id", rejected=pl.col("response"), worst=pl.col("reward"), rejected_finish_reason=pl.col("finish_reason"))
        joined = best.join(worst, on="group_id").filter(pl.col("reward") > pl.col("worst"))
        return joined.with_columns(chosen=pl.col("response"), chosen_finish_reason=pl.col("finish_reason"))
    if pairs == "reference-sample":
        return valid.filter(pl.col("reward") < 0).with_columns(
            chosen=pl.col("reference"), rejected=pl.col("response"), chosen_finish_reason=null,
            rejected_finish_reason=pl.col("finish_reason"))
    firsts = df.group_by("group_id", maintain_order=True).first().filter(pl.col("reference_rejected").is_not_null())
    return firsts.with_columns(chosen=pl.col("reference"), rejected=pl.col("reference_rejected"),
                               chosen_finish_reason=null, rejected_finish_reason=null)


def _stale_temporaries(out: Path) -> None:
    """Remove what a killed export to ``out`` left (``.tmp-<name>.<pid>`` of a dead process)."""
    for tmp in out.parent.glob(f".tmp-{out.name}.*"):
        pid = tmp.name.rsplit(".", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def export(d: StageDir, manifest: Manifest, fmt: str, out: Path, pairs: str = "best-worst",
           keep_truncated: bool = False, kto_threshold: float = KTO_THRESHOLD) -> Exported:
    """Write ``manifest``'s dataset to ``out`` as ``fmt`` (see the CLI's ``datasets export``).

    Built in a temporary sibling (``.tmp-<name>.<pid>``), fsynced, renamed into place: ``out``
    exists only whole. A killed export leaves no ``out`` (its temporary is removed by the next
    export), so the same command simply runs again."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"{out} exists and is not empty; choose a new --out directory")
    if fmt in ("preference", "kto") and manifest.stage != "score":
        raise InputError(f"--format {fmt} needs rewards: export a score dataset (this one is {manifest.stage})")
    parent = out.parent
    made_parent = not parent.exists()
    parent.mkdir(parents=True, exist_ok=True)
    _stale_temporaries(out)
    tmp = parent / f".tmp-{out.name}.{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        result = _build(d, manifest, fmt, tmp, pairs, keep_truncated, kto_threshold)
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        kill_point("export.written")
        if out.exists():
            out.rmdir()  # empty (checked above): the rename needs it gone
        tmp.rename(out)
        _fsync_dir(parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if made_parent:
            with contextlib.suppress(OSError):
                parent.rmdir()  # no empty directory left behind
        raise
    return Exported(result.rows, out, result.warnings)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _build(d: StageDir, manifest: Manifest, fmt: str, out: Path, pairs: str, keep_truncated: bool,
           kto_threshold: float) -> Exported:
    table = d.read_table(manifest)
    lineage = _lineage_front(d, manifest)
    if fmt == "dataset":
        pq.write_table(table, out / "train.parquet", compression="zstd")
        (out / "README.md").write_bytes(card_markdown(d, manifest, card(d, manifest), "train.parquet",
                                                      table.schema).encode())
        return Exported(table.num_rows, out)
    df = pl.from_arrow(table)
    assert isinstance(df, pl.DataFrame)
    conversational = df["prompt_messages"].null_count() < df.height
    warnings: list[str] = []
    note = ""
    truncated = int((df["finish_reason"] == "length").sum())
    if fmt == "preference":
        rows = _preference(df, pairs, keep_truncated)
        result = _trl_frame(rows, conversational, {"chosen": pl.col("chosen"), "rejected": pl.col("rejected")})
        result = result.with_columns(group_id=rows["group_id"], chosen_finish_reason=rows["chosen_finish_reason"],
                                     rejected_finish_reason=rows["rejected_finish_reason"])
        note = f", pairs: {pairs}"
    elif fmt == "kto":
        # Desirable: R(o, y) >= threshold (default 0: at least as good as the reference).
        rows = df.filter(pl.col("reward").is_not_null())
        rows = rows.filter(_complete(keep_truncated) | (pl.col("reward") < kto_threshold))
        result = _trl_frame(rows, conversational, {"completion": pl.col("response"),
                                                   "label": pl.col("reward") >= kto_threshold})
        result = result.with_columns(finish_reason=rows["finish_reason"])
        n_true = int(result["label"].sum()) if result.height else 0
        if result.height and n_true in (0, result.height):
            warnings.append(f"every KTO label is {n_true == result.height} (threshold R >= {kto_threshold:g}, rewards "
                            f"{_num(rows['reward'].min()):g} .. {_num(rows['reward'].max()):g}): KTO needs both; "
                            "set --kto-threshold between them")
        note = f", label: R >= {kto_threshold:g}"
    else:  # prompt-completion: per group, the best finished sample when it beat the reference, else the reference
        if manifest.stage == "score":
            ranked = df.filter(_complete(keep_truncated) | pl.col("reward").is_null()).sort(
                ["group_id", "reward", "sample_idx"], descending=[False, True, False], nulls_last=True)
            # Every group keeps a row: the reference when no finished sample beat it.
            rows = df.group_by("group_id", maintain_order=True).first().select(
                "group_id", "prompt", "prompt_messages", "reference").join(
                ranked.group_by("group_id", maintain_order=True).first().select(
                    "group_id", "response", "reward", "finish_reason"), on="group_id", how="left")
            sample = pl.col("reward").is_not_null() & (pl.col("reward") > 0)
            completion = pl.when(sample).then(pl.col("response")).otherwise(pl.col("reference"))
            finish = pl.when(sample).then(pl.col("finish_reason")).otherwise(pl.lit(None, pl.String))
        else:
            rows = df.group_by("group_id", maintain_order=True).first()
            completion, finish = pl.col("reference"), pl.lit(None, pl.String)
        result = _trl_frame(rows, conversational, {"completion": completion, "finish_reason": finish})
    if truncated and not keep_truncated and fmt != "kto":
        note += f"; {truncated} truncated samples (finish_reason length) never chosen"
    elif truncated and not keep_truncated:
        note += f"; {truncated} truncated samples (finish_reason length) never desirable"
    arrow = result.to_arrow()
    pq.write_table(arrow, out / "train.parquet", compression="zstd")
    extra = {"tags": ["grao-pipe", "trl", fmt], "grao_pipe_lineage": lineage}
    body = (f"\n# {fmt} export of grao-pipe {manifest.stage} dataset {manifest.key[:16]}\n\n"
            f"{arrow.num_rows} rows for TRL ({'conversational' if conversational else 'standard'} format){note}.\n"
            "`finish_reason` (`stop`/`length`) is the sample's; null for a reference or the dataset's own answer.\n\n"
            "## Lineage\n\n```json\n" + json.dumps(lineage, indent=2) + "\n```\n")
    (out / "README.md").write_bytes((card_yaml(arrow.schema, "train.parquet", extra) + body).encode())
    return Exported(arrow.num_rows, out, tuple(warnings))


def _lineage_front(d: StageDir, manifest: Manifest) -> dict[str, Any]:
    try:
        return lineage(d.workdir, manifest)
    except Exception:  # lineage is information: an unreadable sibling must not fail the export
        return {}
