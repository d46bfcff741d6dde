"""The generate stage with ``generate.backend: import`` (``Generate.execute`` hands over here).

Same output as the sampling backends: shards ``shard-i-of-N`` of the prompts ``[i*P, (i+1)*P)``,
each committed by rename (a re-run skips the committed ones), ``--shard k/N`` workers splitting
them, the quarantine list and the manifest written by whoever finds every shard committed. The
manifest's stats carry the import's provenance (``GenerateStats.imported``), which
``datasets show`` prints.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.parquet as pq

from grao_pipe.config import GenerateConfig
from grao_pipe.faults import kill_point
from grao_pipe.generation.import_rows import (
    build_table,
    prompt_table,
    shard_stats,
    tokenize_completions,
)
from grao_pipe.generation.importer import (
    Spill,
    finish_quarantine,
    min_group,
    quarantine_lines,
    scan,
)
from grao_pipe.generation.tokenizer import PolicyTokenizer
from grao_pipe.manifests import GenerateManifest, GenerateShardStats, GenerateStats
from grao_pipe.schemas import GENERATE_SCHEMA, META_STATS, QUARANTINE_NAME, shard_name
from grao_pipe.stages.base import Outcome, Part, Target, Timer

if TYPE_CHECKING:
    from grao_pipe.pipeline import Pipeline

META_IMPORT = b"grao_pipe.import"  # a shard's log-prob counts and model names (JSON)


def _files_digest(target: Target) -> str:
    imp = target.inputs["import"]
    return hashlib.sha256(json.dumps(imp, sort_keys=True).encode()).hexdigest()[:16]


def _prompt_file(path: Path, prompts: list[Any], lo: int, hi: int, tok: PolicyTokenizer) -> Path:
    feather.write_feather(prompt_table(prompts, lo, hi, tok), str(path), compression="uncompressed")
    return path


def execute_import(p: Pipeline, gc: GenerateConfig, target: Target, part: Part) -> Outcome:
    ic = gc.import_
    assert ic is not None
    timer = Timer()
    k, n_parts = part
    prompts = p.prompt_set.prompts
    per = gc.shard_prompts
    n_shards = math.ceil(len(prompts) / per)
    names = [shard_name(i, n_shards) for i in range(n_shards)]
    todo = {i for i in range(n_shards) if i % n_parts == k and not target.dir.is_committed(names[i], "generate")}
    policy = p.policy(target.round)
    tok = PolicyTokenizer(policy.local_dir(), p.cfg.model.trust_remote_code)
    spill = Spill(target.dir.path, per, todo, functools.partial(tokenize_completions, tok))
    # The shards' prompt columns are tokenized on another thread during passes 1-2 (which leave
    # a core idle while the spill worker tokenizes responses), to disk: memory stays one shard.
    prep = ThreadPoolExecutor(1, thread_name_prefix="import-prompts")
    try:
        prompt_files = {i: prep.submit(_prompt_file, spill.dir / f"prompts-{i:05d}.arrow", prompts, i * per,
                                       min((i + 1) * per, len(prompts)), tok) for i in sorted(todo)}
        sc = scan(p, gc, tok, spill)
        dropped = finish_quarantine(sc, min_group(p), p.cfg.data.max_quarantine_share, prompts,
                                    str(p.input(ic.results)))
        ref = None
        for i in sorted(todo):
            df = spill.read(i)
            if df is not None:
                df = df.filter(~df["prompt_idx"].is_in(sorted(dropped)))
            if df is None or not df.height:
                table = GENERATE_SCHEMA.empty_table()
                meta: dict[str, Any] = {"kept": 0, "absent": 0, "unaligned": 0, "models": []}
            else:
                per_prompt = feather.read_table(prompt_files[i].result(), memory_map=False)
                table, counts, models = build_table(df, per_prompt, _files_digest(target))
                if ic.recompute_logprobs:
                    if ref is None:
                        from grao_pipe.reference_model import ReferenceModel

                        ref = ReferenceModel(policy.local_dir())
                    lps = ref.token_logps(table["prompt_token_ids"].to_pylist(), table["response_token_ids"].to_pylist())
                    col = table.schema.get_field_index("behaviour_logprobs")
                    table = table.set_column(col, table.schema.field(col), pa.array(lps, pa.list_(pa.float32())))
                meta = {"kept": counts.kept, "absent": counts.absent, "unaligned": counts.unaligned,
                        "models": sorted(models)}
            target.dir.write_shard(names[i], table, "generate", meta={META_IMPORT: json.dumps(meta).encode(),
                                                                      META_STATS: json.dumps(shard_stats(table)).encode()})
            kill_point(f"generate.import:{i}")
    finally:
        prep.shutdown(wait=True, cancel_futures=True)  # before the spill directory goes
        spill.close()
    target.dir.pull()
    missing = [name for name in names if not target.dir.is_committed(name, "generate")]
    if missing:
        note = f"part {k}/{n_parts} done; {len(missing)} shard(s) of other workers missing, no manifest yet"
        return Outcome(target, False, None, timer.seconds, [note])
    return _merge(p, target, names, sc, ic.recompute_logprobs, timer)


def _merge(p: Pipeline, target: Target, names: list[str], sc: Any, recomputed: bool, timer: Timer) -> Outcome:
    pset = p.prompt_set
    lines = "".join(json.dumps(q) + "\n" for q in pset.quarantined) + quarantine_lines(sc.q)
    target.dir.write_file(QUARANTINE_NAME, lines.encode())
    entries = [target.dir.committed_entry(name, META_STATS) for name in names]  # footers, no decoding
    per_shard = [GenerateShardStats.model_validate(e.stats) for e in entries]
    lp = {"kept": 0, "absent": 0, "unaligned": 0}
    for name in names:
        meta = json.loads((pq.read_schema(target.dir.member(name)).metadata or {}).get(META_IMPORT, b"{}"))
        for key in lp:
            lp[key] += int(meta.get(key, 0))
    ic = p.cfg.generate.import_
    assert ic is not None
    inputs = target.inputs["import"]
    imported = {
        "format": ic.format,
        "files": {role: {"name": getattr(ic, role).rsplit("/", 1)[-1], "sha256": inputs[role]["sha256"]}
                  for role in ("requests", "results") if role in inputs},
        "models_seen": sorted(sc.models),
        "records": sc.q.items, "completions_read": sc.completions,
        "quarantined": sc.q.counts(),
        "behaviour_logprobs": {**lp, "recomputed": recomputed},
        "min_group": inputs["min_group"],
    }
    rows = sum(e.rows for e in entries)
    tokens = sum(s.response_tokens for s in per_shard)
    stats = GenerateStats(
        prompts=len(pset.prompts), quarantined_rows=len(pset.quarantined), samples=rows,
        groups=sum(s.groups for s in per_shard), response_tokens=tokens,
        max_response_tokens=max((s.max_response_tokens for s in per_shard), default=0),
        truncated_responses=sum(s.truncated_responses for s in per_shard),
        mean_response_tokens=tokens / max(rows, 1), seconds=round(timer.seconds, 3), imported=imported,
    )
    return Outcome(target, False, target.commit(GenerateManifest, entries, stats), timer.seconds)
