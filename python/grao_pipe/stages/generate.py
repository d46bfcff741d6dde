"""Stage 1: sample G responses per prompt ("off-policy groups") into Parquet shards.

Shard ``i`` holds prompts ``[i*P, (i+1)*P)`` (P = ``generate.prompts_per_shard``). With
``--shard k/N`` a worker writes only the shards with ``i % N == k``, so N machines split the
prompts with no coordinator; whichever worker finds every shard committed writes the manifest.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from grao_pipe import remote
from grao_pipe.config import PipelineConfig
from grao_pipe.generation import Request, Sampler, make_sampler
from grao_pipe.generation.tokenizer import PolicyTokenizer
from grao_pipe.prompts import Prompt, group_id, load_prompt_set
from grao_pipe.schemas import (
    GENERATE_SCHEMA,
    META_PROMPTS_SKIPPED,
    META_PROMPTS_TRUNCATED,
    QUARANTINE_NAME,
    shard_name,
)
from grao_pipe.stages.common import Outcome, StageRef, Timer, generate_ref, prepare, stage_lock
from grao_pipe.store import digest, file_sha256, shard_is_committed, write_manifest, write_shard


def _seed(base: int, shard: int, batch: int) -> int:
    return int(digest({"seed": base, "shard": shard, "batch": batch})[:12], 16)


def prepare_requests(cfg: PipelineConfig, tok: PolicyTokenizer, prompts: list[Prompt]) -> tuple[list[Request], int, int]:
    """Render and tokenize; over-long prompts are truncated from the left or skipped (counted)."""
    limit = cfg.generate.max_prompt_tokens or max(1, tok.context - cfg.generate.max_new_tokens)
    out, skipped, truncated = [], 0, 0
    for p in prompts:
        text = tok.render(p)
        ids = tok.encode(text)
        if len(ids) > limit:
            if cfg.generate.overlong_prompt == "skip" or p.messages is not None:
                skipped += 1  # a chat transcript cut in the middle is not a prompt: skip it
                continue
            ids = ids[-limit:]
            text = tok.decode(ids)
            truncated += 1
        out.append(Request(p, text, ids))
    return out, skipped, truncated


def _generate_shard(cfg: PipelineConfig, tok: PolicyTokenizer, sampler: Sampler, prompts: list[Prompt],
                    shard: int, policy: str, progress: Progress, task: Any) -> tuple[pa.Table, dict[bytes, bytes]]:
    gc = cfg.generate
    requests, skipped, truncated = prepare_requests(cfg, tok, prompts)
    cols: dict[str, list[Any]] = {name: [] for name in GENERATE_SCHEMA.names}
    for b in range(0, len(requests), gc.batch_size):
        batch = requests[b : b + gc.batch_size]
        groups = sampler.sample(batch, _seed(gc.seed, shard, b // gc.batch_size))
        for r, samples in zip(batch, groups, strict=True):
            p = r.prompt
            gid, ref_ids = group_id(r.text, p.reference), tok.reference_ids(p.reference)
            rej_ids = tok.reference_ids(p.rejected) if p.rejected is not None else None
            messages = [{"role": role, "content": c} for role, c in p.messages] if p.messages else None
            for i, s in enumerate(samples):
                row = {
                    "group_id": gid, "sample_idx": i, "prompt_idx": p.index, "prompt": r.text,
                    "prompt_messages": messages, "reference": p.reference, "rejected": p.rejected,
                    "response": s.text, "prompt_token_ids": r.token_ids, "response_token_ids": s.token_ids,
                    "reference_token_ids": ref_ids, "reference_rejected_token_ids": rej_ids,
                    "behaviour_logprobs": s.logprobs,
                    "finish_reason": s.finish_reason, "temperature": gc.temperature, "top_p": gc.top_p,
                    "max_new_tokens": gc.max_new_tokens, "seed": s.seed, "backend": sampler.name,
                    "policy_digest": policy,
                }
                for k, v in row.items():
                    cols[k].append(v)
        new_tokens = sum(len(s.token_ids) for g in groups for s in g)
        tokens = progress.tasks[task].fields["tokens"] + new_tokens
        elapsed = progress.tasks[task].elapsed or 1e-9
        progress.update(task, advance=len(batch), tokens=tokens, tok_s=tokens / elapsed)
    progress.update(task, advance=skipped)
    meta = {META_PROMPTS_SKIPPED: str(skipped).encode(), META_PROMPTS_TRUNCATED: str(truncated).encode()}
    return pa.Table.from_pydict(cols, schema=GENERATE_SCHEMA), meta


def _entry(path: Path) -> dict[str, Any]:
    table = pq.read_table(path)
    meta = table.schema.metadata or {}
    lengths = pc.list_value_length(table["response_token_ids"])
    return {"name": path.name, "rows": table.num_rows, "sha256": file_sha256(path), "stats": {
        "groups": pc.count_distinct(table["group_id"]).as_py() if table.num_rows else 0,
        "response_tokens": pc.sum(lengths).as_py() or 0,
        "max_response_tokens": pc.max(lengths).as_py() or 0,
        "truncated_responses": pc.sum(pc.equal(table["finish_reason"], "length")).as_py() or 0,
        "prompts_skipped_overlong": int(meta.get(META_PROMPTS_SKIPPED, b"0")),
        "prompts_truncated": int(meta.get(META_PROMPTS_TRUNCATED, b"0")),
    }}


def run(cfg: PipelineConfig, round_: int = 1, force: bool = False, part: tuple[int, int] = (0, 1)) -> Outcome:
    ref = generate_ref(cfg, round_)
    with stage_lock(ref, f".part-{part[0]}-of-{part[1]}" if part[1] > 1 else ""):
        return _run(cfg, round_, force, ref, part)


def _run(cfg: PipelineConfig, round_: int, force: bool, ref: StageRef, part: tuple[int, int] = (0, 1)) -> Outcome:
    k, n_parts = part
    cached = prepare(ref, force and k == 0)  # with --shard, only worker 0 may wipe on --force
    if cached is not None:
        return Outcome(ref, True, cached)
    timer = Timer()
    pset = load_prompt_set(cfg.data)
    prompts = pset.prompts
    per = cfg.generate.prompts_per_shard
    n_shards = math.ceil(len(prompts) / per)
    paths = [ref.directory / shard_name(i, n_shards) for i in range(n_shards)]
    todo = [i for i in range(n_shards) if i % n_parts == k and not shard_is_committed(paths[i], "generate")]
    if todo:
        model_dir = remote.ensure_local(Path(ref.inputs["_model_dir"]))
        tok = PolicyTokenizer(model_dir, cfg.model.trust_remote_code)
        sampler = make_sampler(cfg, model_dir, tok)
        columns = (TextColumn("generate"), BarColumn(), MofNCompleteColumn(), TextColumn("prompts"),
                   TimeElapsedColumn(), TextColumn("{task.fields[tokens]} tokens, {task.fields[tok_s]:.0f} tokens/s"))
        with Progress(*columns, console=Console(stderr=True), disable=not sys.stderr.isatty()) as progress:
            task = progress.add_task("generate", total=sum(len(prompts[i * per : (i + 1) * per]) for i in todo), tokens=0, tok_s=0.0)
            for i in todo:
                table, meta = _generate_shard(cfg, tok, sampler, prompts[i * per : (i + 1) * per], i,
                                              ref.inputs["model"], progress, task)
                write_shard(paths[i], table, "generate", meta=meta)
    # Workers on other machines publish to a remote workdir: fetch what they committed meanwhile.
    remote.pull_tree(ref.directory, finished_only=False)
    if not all(shard_is_committed(p, "generate") for p in paths):
        missing = [p.name for p in paths if not shard_is_committed(p, "generate")]
        note = f"part {k}/{n_parts} done; {len(missing)} shard(s) of other workers missing, no manifest yet"
        return Outcome(ref, False, None, timer.seconds, [note])
    # Merge: every shard is committed, whoever wrote it. Write the quarantine list, then the manifest.
    (ref.directory / QUARANTINE_NAME).write_text("".join(json.dumps(q) + "\n" for q in pset.quarantined))
    entries = [_entry(p) for p in paths]
    rows = sum(e["rows"] for e in entries)
    totals = {key: sum(e["stats"][key] for e in entries) for key in entries[0]["stats"]}
    stats = {
        "prompts": len(prompts),
        "quarantined_rows": len(pset.quarantined),
        "samples": rows,
        **totals,
        "mean_response_tokens": totals["response_tokens"] / max(rows, 1),
        "max_response_tokens": max(e["stats"]["max_response_tokens"] for e in entries),
        "seconds": round(timer.seconds, 3),
    }
    manifest = write_manifest(ref.directory, stage="generate", key=ref.key, config=ref.config,
                              inputs={**ref.inputs, "round": round_}, shards=entries, stats=stats)
    return Outcome(ref, False, manifest, timer.seconds)
