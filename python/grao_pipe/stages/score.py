"""Stage 2: rewards relative to each prompt's reference, then group-relative advantages.

Raw rewards are cached per (scorer, generate shard) under ``<workdir>/rewards/``: changing
scorer weights or advantage settings re-runs only the cheap combination and the Rust kernel,
never a scorer; adding a scorer runs only that one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from grao_pipe import advantages, scoring
from grao_pipe.config import PipelineConfig, ScorerConfig
from grao_pipe.errors import DataError
from grao_pipe.remote import ensure_local, local_workdir

if TYPE_CHECKING:
    from grao_pipe.reference_model import ReferenceModel
from grao_pipe.schemas import META_ERRORS, META_UNPARSEABLE
from grao_pipe.scoring.base import Scorer
from grao_pipe.stages.common import (
    Outcome,
    StageRef,
    Timer,
    generate_ref,
    prepare,
    require,
    score_ref,
    stage_lock,
)
from grao_pipe.store import (
    file_sha256,
    member,
    read_shard,
    shard_is_committed,
    write_manifest,
    write_shard,
)


class _Rewards:
    """One scorer's cached raw rewards for the generate output ``gen_key``."""

    def __init__(self, cfg: PipelineConfig, scorer_cfg: ScorerConfig, gen_key: str):
        self.cfg = scorer_cfg
        self.dir = local_workdir(cfg.workdir) / "rewards" / scoring.scorer_key(scorer_cfg)[:16] / gen_key[:16]
        self._scorer: Scorer | None = None
        self.computed = 0  # shards scored in this run (0 when everything came from the cache)

    def get(self, name: str, table: pa.Table) -> tuple[pa.Array, int, int]:
        """(rewards aligned with ``table``, scorer errors, unparseable answers)."""
        path = ensure_local(self.dir / name)  # another machine may have scored it already
        if shard_is_committed(path, "rewards"):
            cached = read_shard(path, "rewards")
            if cached["group_id"].equals(table["group_id"]) and cached["sample_idx"].equals(table["sample_idx"]):
                meta = cached.schema.metadata or {}
                return (cached["reward"].combine_chunks(), int(meta.get(META_ERRORS, b"0")),
                        int(meta.get(META_UNPARSEABLE, b"0")))
        if self._scorer is None:
            self._scorer = scoring.build(self.cfg)
        result = self._scorer.score(table["prompt"].to_pylist(), table["response"].to_pylist(),
                                    table["reference"].to_pylist())
        reward = pa.array(result.values, pa.float64())
        self.dir.mkdir(parents=True, exist_ok=True)
        write_shard(path, pa.table({"group_id": table["group_id"], "sample_idx": table["sample_idx"],
                                    "reward": reward}), "rewards",
                    meta={META_ERRORS: str(result.errors).encode(), META_UNPARSEABLE: str(result.unparseable).encode()})
        self.computed += 1
        return reward, result.errors, result.unparseable


def _combine(parts: list[tuple[float, pa.Array]]) -> pa.Array:
    """R = Σ w_k R_k; null (invalid) where any scorer's value is null."""
    total = pc.multiply(parts[0][1], parts[0][0])
    for w, r in parts[1:]:
        total = pc.add(total, pc.multiply(r, w))
    return total


def _score_table(cfg: PipelineConfig, table: pa.Table, name: str, rewards: list[_Rewards],
                 ref_model: ReferenceModel | None) -> tuple[pa.Table, dict[str, int]]:
    per_scorer, counts = [], {"scorer_errors": 0, "unparseable": 0}
    for r in rewards:
        values, errors, unparseable = r.get(name, table)
        per_scorer.append((r.cfg, values))
        counts["scorer_errors"] += errors
        counts["unparseable"] += unparseable
    reward = _combine([(c.weight, v) for c, v in per_scorer])
    adv = advantages.compute(table["group_id"], reward, cfg.score.advantage)
    keep = adv.reward_valid
    if cfg.score.advantage.degenerate == "drop":
        keep = pc.and_(keep, pc.invert(adv.degenerate))
    out = (
        table.append_column("reward", reward)
        .append_column("reward_valid", adv.reward_valid)
        .append_column("advantage", adv.advantage)
        .append_column("reference_advantage", adv.reference_advantage)
        .append_column("degenerate", adv.degenerate)
        .append_column("keep", keep)
    )
    ref_lp, ref_ref_lp, ref_rej_lp = _reference_logprobs(table, ref_model)
    out = (out.append_column("ref_logprobs", ref_lp).append_column("ref_reference_logprobs", ref_ref_lp)
           .append_column("ref_reference_rejected_logprobs", ref_rej_lp))
    for c, v in per_scorer:
        out = out.append_column(f"reward_{c.name}", v)
    return out, counts


def _reference_logprobs(table: pa.Table, ref_model: ReferenceModel | None) -> tuple[pa.Array, pa.Array, pa.Array]:
    """Reference-model log-probs of each response, of the group's reference answer and of the
    dataset's rejected answer (null where there is none)."""
    lists = pa.list_(pa.float32())
    null = pa.nulls(table.num_rows, lists)
    if ref_model is None:
        return null, null, null
    prompts = table["prompt_token_ids"].to_pylist()
    responses = ref_model.token_logps(prompts, table["response_token_ids"].to_pylist())
    # The reference and rejected answers are scored once per group, repeated on the group's rows.
    gids = table["group_id"].to_pylist()
    first = {g: i for i, g in reversed(list(enumerate(gids)))}
    uniq = list(first.values())

    def per_group(column: str) -> list[list[float] | None]:
        conts = table[column].to_pylist()
        todo = [i for i in uniq if conts[i] is not None]
        lps = dict(zip(todo, ref_model.token_logps([prompts[i] for i in todo], [conts[i] for i in todo]), strict=True))
        return [lps.get(first[g]) for g in gids]

    return (pa.array(responses, lists), pa.array(per_group("reference_token_ids"), lists),
            pa.array(per_group("reference_rejected_token_ids"), lists))


def _stats(scored: pa.Table) -> dict[str, Any]:
    """Per-shard counts, computed from the stored columns (so a resumed shard reports the same)."""
    groups = pc.count_distinct(scored["group_id"]).as_py()
    degenerate = pc.count_distinct(pc.filter(scored["group_id"], scored["degenerate"])).as_py()
    sizes = pc.value_counts(scored["group_id"]).field("counts")
    return {
        "rows": scored.num_rows,
        "groups": groups,
        "degenerate_groups": degenerate,
        "single_sample_groups": pc.sum(pc.equal(sizes, 1)).as_py() or 0,
        "invalid_rewards": scored.num_rows - (pc.sum(scored["reward_valid"]).as_py() or 0),
        "reward_sum": pc.sum(scored["reward"]).as_py() or 0.0,
        "reward_count": pc.count(scored["reward"]).as_py(),
        "kept_rows": pc.sum(scored["keep"]).as_py() or 0,
    }


def run(cfg: PipelineConfig, round_: int = 1, force: bool = False) -> Outcome:
    gen_ref = generate_ref(cfg, round_)
    ref = score_ref(cfg, round_, gen_ref)
    with stage_lock(ref, ""):
        return _run(cfg, force, ref, gen_ref)


def _run(cfg: PipelineConfig, force: bool, ref: StageRef, gen_ref: StageRef) -> Outcome:
    gen = require(gen_ref, "score")
    cached = prepare(ref, force)
    if cached is not None:
        return Outcome(ref, True, cached)
    timer = Timer()
    rewards = [_Rewards(cfg, s, gen_ref.key) for s in cfg.score.scorers]
    ref_model = None
    if cfg.score.reference_logprobs:
        from grao_pipe.reference_model import ReferenceModel

        ref_model = ReferenceModel(ref.inputs["_reference_model_dir"])
    entries = []
    for shard in gen.shards:
        path = ref.directory / shard["name"]
        counts = {"scorer_errors": 0, "unparseable": 0}
        if shard_is_committed(path, "score"):  # resume after a crash: keep what was committed
            scored = read_shard(path, "score")
            entry = {"name": path.name, "rows": scored.num_rows, "sha256": file_sha256(path)}
        else:
            table = read_shard(member(gen_ref.directory, shard["name"]), "generate", shard["sha256"])
            if table.num_rows != shard["rows"]:
                raise DataError(f"{gen_ref.directory / shard['name']}: {table.num_rows} rows, manifest says {shard['rows']}")
            scored, counts = _score_table(cfg, table, shard["name"], rewards, ref_model)
            entry = write_shard(path, scored, "score")
        entry["stats"] = {**_stats(scored), **counts}
        entries.append(entry)
    totals = {k: sum(e["stats"][k] for e in entries) for k in entries[0]["stats"]} if entries else {}
    stats = {
        **totals,
        "mean_reward": totals.get("reward_sum", 0.0) / max(totals.get("reward_count", 0), 1),
        "degenerate_share": totals.get("degenerate_groups", 0) / max(totals.get("groups", 0), 1),
        "scorer_shards_computed": {r.cfg.name: r.computed for r in rewards},
        "seconds": round(timer.seconds, 3),
    }
    manifest = write_manifest(ref.directory, stage="score", key=ref.key, config=ref.config,
                              inputs={**ref.inputs, "round": ref.round}, shards=entries, stats=stats)
    return Outcome(ref, False, manifest, timer.seconds)
