"""Stage 1: sample G responses per prompt ("off-policy groups") into Parquet shards.

Shard ``i`` holds prompts ``[i*P, (i+1)*P)`` (P = ``generate.shard_prompts``: about
``generate.shard_rows`` samples, or ``generate.prompts_per_shard``). With
``--shard k/N`` a worker writes only the shards with ``i % N == k``, so N machines split the
prompts with no coordinator; whichever worker finds every shard committed writes the manifest.
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from grao_pipe import progress
from grao_pipe.errors import ConfigError
from grao_pipe.generation import Sampler, make_sampler, prepare_requests
from grao_pipe.generation.tokenizer import PolicyTokenizer
from grao_pipe.hashing import digest
from grao_pipe.manifests import GenerateManifest, GenerateShardStats, GenerateStats, ShardEntry
from grao_pipe.prompts import Prompt, check_prompt_file, group_id
from grao_pipe.schemas import (
    GENERATE_SCHEMA,
    META_PROMPTS_SKIPPED,
    META_PROMPTS_TRUNCATED,
    QUARANTINE_NAME,
    shard_name,
)
from grao_pipe.sections import keyed
from grao_pipe.stages.base import Edge, Outcome, Part, Stage, Target, Timer, Upstream
from grao_pipe.storage import StageDir, content_sha256

if TYPE_CHECKING:
    from grao_pipe.config import GenerateConfig
    from grao_pipe.pipeline import Pipeline


def _seed(base: int, shard: int, batch: int) -> int:
    return int(digest({"seed": base, "shard": shard, "batch": batch})[:12], 16)


def _generate_shard(gc: GenerateConfig, tok: PolicyTokenizer, sampler: Sampler, prompts: list[Prompt],
                    shard: int, policy: str, task: progress.Task) -> tuple[pa.Table, dict[bytes, bytes]]:
    requests, skipped, truncated = prepare_requests(gc, tok, prompts)
    cols: dict[str, list[Any]] = {name: [] for name in GENERATE_SCHEMA.names}
    for b in range(0, len(requests), gc.batch_size):
        batch = requests[b : b + gc.batch_size]
        groups = sampler.sample(batch, _seed(gc.seed, shard, b // gc.batch_size))
        for r, samples in zip(batch, groups, strict=True):
            p = r.prompt
            gid, ref_ids = group_id(r.text, p.reference), tok.reference_ids(p.reference)
            rejected_ids = tok.reference_ids(p.rejected) if p.rejected is not None else None
            messages = [{"role": role, "content": c} for role, c in p.messages] if p.messages else None
            for i, s in enumerate(samples):
                row = {
                    "group_id": gid, "sample_idx": i, "prompt_idx": p.index, "prompt": r.text,
                    "prompt_messages": messages, "reference": p.reference,
                    "reference_rejected": p.rejected, "reference_rejected_token_ids": rejected_ids,
                    "response": s.text, "prompt_token_ids": r.token_ids, "response_token_ids": s.token_ids,
                    "reference_token_ids": ref_ids, "behaviour_logprobs": s.logprobs,
                    "finish_reason": s.finish_reason, "temperature": gc.temperature, "top_p": gc.top_p,
                    "max_new_tokens": gc.max_new_tokens, "seed": s.seed, "backend": sampler.name,
                    "policy_digest": policy,
                }
                for k, v in row.items():
                    cols[k].append(v)
        task.advance(len(batch), tokens=sum(len(s.token_ids) for g in groups for s in g))
    task.advance(skipped)
    meta = {META_PROMPTS_SKIPPED: str(skipped).encode(), META_PROMPTS_TRUNCATED: str(truncated).encode()}
    return pa.Table.from_pydict(cols, schema=GENERATE_SCHEMA), meta


def _entry(d: StageDir, name: str) -> ShardEntry:
    """A committed shard's manifest entry with its stats, from the file (whichever worker wrote it)."""
    entry, table = d.committed(name, "generate")
    meta = table.schema.metadata or {}
    lengths = pc.list_value_length(table["response_token_ids"])
    stats = GenerateShardStats(
        groups=pc.count_distinct(table["group_id"]).as_py() if table.num_rows else 0,
        response_tokens=pc.sum(lengths).as_py() or 0,
        max_response_tokens=pc.max(lengths).as_py() or 0,
        truncated_responses=pc.sum(pc.equal(table["finish_reason"], "length")).as_py() or 0,
        prompts_skipped_overlong=int(meta.get(META_PROMPTS_SKIPPED, b"0")),
        prompts_truncated=int(meta.get(META_PROMPTS_TRUNCATED, b"0")),
    )
    return entry.model_copy(update={"stats": stats.model_dump()})


def _import_summary(imported: dict[str, Any] | None) -> list[str]:
    if not imported:
        return []
    lp = imported["behaviour_logprobs"]
    q = ", ".join(f"{k} {v}" for k, v in imported["quarantined"].items()) or "none"
    return [f"imported ({imported['format']}) from {imported['records']} records, models "
            f"{', '.join(imported['models_seen']) or 'unknown'}; quarantined: {q}; behaviour log-probs kept "
            f"{lp['kept']}, absent {lp['absent']}, unaligned {lp['unaligned']}"
            + (" (recomputed with the configured model)" if lp["recomputed"] else "")]


class Generate(Stage):
    name = "generate"
    help = "Sample G responses per prompt into Parquet shards."
    dataset = True
    shardable = True

    upstream = (Edge("train", -1, model=True),)  # round r samples from round r-1's trained model

    def target(self, p: Pipeline, up: Upstream) -> Target:
        cfg = p.cfg
        gc = cfg.generate.for_round(up.round)
        prompts = {"sha256": content_sha256(check_prompt_file(p.input(cfg.data.prompts))), **keyed(cfg.data)}
        section = {"generate": keyed(gc), "trust_remote_code": cfg.model.trust_remote_code}
        policy = up.model("train", -1)
        inputs: dict[str, Any] = {"prompts": prompts, "model": policy.digest}
        if policy.base is not None:  # a LoRA round's policy: on record for `datasets show`
            inputs["lora_base"] = policy.base.digest
        if gc.import_ is not None:  # the imported files' contents, never their paths
            from grao_pipe.generation.importer import import_inputs

            inputs["import"] = import_inputs(p, gc.import_)
        return self.make_target(p, up, section, inputs)

    def execute(self, p: Pipeline, target: Target, part: Part) -> Outcome:
        k, n_parts = part
        timer = Timer()
        gc = p.cfg.generate.for_round(target.round)
        if gc.import_ is not None:
            from grao_pipe.generation.import_stage import execute_import

            return execute_import(p, gc, target, part)
        pset = p.prompt_set
        prompts = pset.prompts
        per = gc.shard_prompts
        n_shards = math.ceil(len(prompts) / per)
        names = [shard_name(i, n_shards) for i in range(n_shards)]
        todo = [i for i in range(n_shards) if i % n_parts == k and not target.dir.adoptable(names[i], "generate")]
        if todo:
            task = progress.task("generate", total=sum(len(prompts[i * per : (i + 1) * per]) for i in todo),
                                 unit="prompts")
            policy = target.upstream.model("train", -1)
            model_dir, adapter_dir = policy.for_backend(gc.backend)  # a LoRA round: base + adapter
            tok = PolicyTokenizer(policy.tokenizer_dir(), p.cfg.model.trust_remote_code)
            if gc.max_new_tokens >= tok.context:  # no prompt token would fit: 0 samples, then train fails
                raise ConfigError(f"generate.max_new_tokens={gc.max_new_tokens} leaves no room for a prompt in the "
                                  f"model's context of {tok.context} tokens; lower it below {tok.context}")
            sampler = make_sampler(gc, model_dir, tok, p.cfg.model.trust_remote_code, adapter_dir)
            task.restart_clock()  # rates from the first sample, not from the model load
            for i in todo:
                table, meta = _generate_shard(gc, tok, sampler, prompts[i * per : (i + 1) * per], i,
                                              policy.digest, task)
                target.dir.write_shard(names[i], table, "generate", meta=meta)
            task.finish()
        target.dir.pull()  # workers on other machines may have committed their shards meanwhile
        missing = [name for name in names if not target.dir.is_committed(name, "generate")]
        if missing:
            note = f"part {k}/{n_parts} done; {len(missing)} shard(s) of other workers missing, no manifest yet"
            return Outcome(target, False, None, timer.seconds, [note])
        # Merge: every shard is committed, whoever wrote it. The quarantine list, then the manifest.
        target.dir.write_file(QUARANTINE_NAME, "".join(json.dumps(q) + "\n" for q in pset.quarantined).encode())
        entries = [_entry(target.dir, name) for name in names]
        per_shard = [GenerateShardStats.model_validate(e.stats) for e in entries]
        rows = sum(e.rows for e in entries)
        tokens = sum(s.response_tokens for s in per_shard)
        stats = GenerateStats(
            prompts=len(prompts), quarantined_rows=len(pset.quarantined), samples=rows,
            groups=sum(s.groups for s in per_shard), response_tokens=tokens,
            max_response_tokens=max((s.max_response_tokens for s in per_shard), default=0),
            truncated_responses=sum(s.truncated_responses for s in per_shard),
            prompts_skipped_overlong=sum(s.prompts_skipped_overlong for s in per_shard),
            prompts_truncated=sum(s.prompts_truncated for s in per_shard),
            mean_response_tokens=tokens / max(rows, 1), seconds=round(timer.seconds, 3),
        )
        model = (p.cfg.model.path or "the embedded tiny model") if target.round == 1 else f"round {target.round - 1}'s train"
        sources = {"prompts": p.cfg.data.prompts, "model": model}
        return Outcome(target, False, target.commit(GenerateManifest, entries, stats, sources), timer.seconds)

    def summary(self, o: Outcome) -> list[str]:
        assert isinstance(o.manifest, GenerateManifest)
        st = o.manifest.stats
        return [f"{st.prompts} prompts, {st.samples} samples; response tokens mean {st.mean_response_tokens:.1f}, "
                f"max {st.max_response_tokens}; truncated responses {st.truncated_responses}; prompts skipped "
                f"(too long) {st.prompts_skipped_overlong}, truncated {st.prompts_truncated}; rows quarantined "
                f"{st.quarantined_rows}", *_import_summary(st.imported)]
