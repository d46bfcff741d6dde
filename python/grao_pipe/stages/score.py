"""Stage 2: rewards relative to each prompt's reference, then group-relative advantages.

Raw rewards are cached per (scorer, generate shard) under ``<workdir>/rewards/``: changing
scorer weights or advantage settings re-runs only the cheap combination and the Rust kernel,
never a scorer; adding a scorer runs only that one.
"""

from __future__ import annotations

import json
import os
import struct
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc

from grao_pipe import advantages, progress, scoring
from grao_pipe.config import FunctionScorer, PipelineConfig, ScoreConfig, ScorerConfig
from grao_pipe.errors import DataError
from grao_pipe.manifests import ScoreManifest, ScoreShardStats, ScoreStats, ShardEntry
from grao_pipe.schemas import (
    JUDGE_DETAIL_FIELDS,
    META_ERRORS,
    META_SOURCE,
    META_STATS,
    META_UNPARSEABLE,
    judge_column,
)
from grao_pipe.scoring.base import ScoreInput, Scorer
from grao_pipe.sections import keyed
from grao_pipe.stages.base import Edge, Outcome, Part, Stage, Target, Timer, Upstream
from grao_pipe.storage import StageDir, read_shard, shard_is_committed

if TYPE_CHECKING:
    from grao_pipe.pipeline import Pipeline
    from grao_pipe.reference_model import ReferenceModel


class _Rewards:
    """One scorer's cached raw rewards for one generate output."""

    def __init__(self, p: Pipeline, scorer_cfg: ScorerConfig, gen_key: str):
        self.cfg = scorer_cfg
        self.files = p.scorer_files(scorer_cfg)
        self.dir: StageDir = p.workdir.cache_dir("rewards", scoring.scorer_key(scorer_cfg, self.files)[:16], gen_key[:16])
        self.dir.clean()  # temporaries a killed run left behind
        self._scorer: Scorer | None = None
        self._lock = threading.Lock()  # shards are scored from two threads
        self.computed = 0  # shards scored in this run (0 when everything came from the cache)

    def get(self, name: str, table: pa.Table, source_sha256: str) -> tuple[pa.Array, int, int, pa.Table | None]:
        """(rewards aligned with ``table``, the generate shard ``name`` whose bytes hash to
        ``source_sha256``; scorer errors; unparseable answers; the judge's raw answers and
        verdicts, JUDGE_DETAIL_FIELDS, or None)."""
        path = self.dir.local_path(name)  # another machine may have scored it already
        if shard_is_committed(path, "rewards"):
            try:
                cached = read_shard(path, "rewards")
            except DataError:  # damaged pages (it is written without fsync): recomputed below
                cached = None
            meta = (cached.schema.metadata or {}) if cached is not None else {}
            if cached is not None and meta.get(META_SOURCE) == source_sha256.encode() \
                    and cached.num_rows == table.num_rows:
                detail = [f.name for f in JUDGE_DETAIL_FIELDS if f.name in cached.column_names]
                return (cached["reward"].combine_chunks(), int(meta.get(META_ERRORS, b"0")),
                        int(meta.get(META_UNPARSEABLE, b"0")), cached.select(detail) if detail else None)
        with self._lock:
            if self._scorer is None:
                self._scorer = scoring.build(self.cfg, self.files)
            self.computed += 1
        result = self._scorer.score(ScoreInput.of(table))
        reward = result.values
        # A re-derivable cache: no fsync (a torn file fails its page checksums and is recomputed).
        cols = {"reward": reward}
        if result.details is not None:
            cols |= {c: result.details[c] for c in result.details.column_names}
        self.dir.write_shard(name, pa.table(cols), "rewards",
                             meta={META_SOURCE: source_sha256.encode(), META_ERRORS: str(result.errors).encode(),
                                   META_UNPARSEABLE: str(result.unparseable).encode()}, durable=False)
        return reward, result.errors, result.unparseable, result.details


def _scalar(x: float, dtype: pa.DataType) -> pa.Scalar:
    """An int64/float64 Arrow scalar built from its bytes: converting a Python object
    (pa.scalar, pa.array, to_numpy) makes pyarrow import pandas, 0.4 s a process when it is
    installed, which the stage never needs."""
    fmt = "<q" if dtype == pa.int64() else "<d"
    return pa.Array.from_buffers(dtype, 1, [None, pa.py_buffer(struct.pack(fmt, x))])[0]


def _combine(parts: list[tuple[float, pa.Array]]) -> pa.Array:
    """R = Σ w_k R_k; null (invalid) where any scorer's value is null."""
    total = None
    for w, r in parts:
        term = r if w == 1.0 else pc.multiply(r, _scalar(w, pa.float64()))
        total = term if total is None else pc.add(total, term)
    assert total is not None, "a score config has at least one scorer"
    return total


# The generate columns scoring reads; the others are copied into the score shard as encoded.
_SCORED = ["group_id", "prompt", "prompt_messages", "response", "reference"]
_REFERENCE_TOKENS = ["prompt_token_ids", "response_token_ids", "reference_token_ids", "reference_rejected_token_ids"]


def score_section(cfg: PipelineConfig) -> ScoreConfig:
    """``score`` as the configured objective needs it (``Needs``): its advantages in the mode its
    loss reads, reference-model log-probs when it reads them. This is what the stage computes
    and what its key hashes."""
    needs, section = cfg.train.configured.needs, cfg.score
    advantage = section.advantage.model_copy(update={"mode": needs.advantage_mode or section.advantage.mode})
    return section.model_copy(update={"advantage": advantage,
                                      "reference_logprobs": section.reference_logprobs or needs.reference_logprobs})


def _score_table(cfg: ScoreConfig, table: pa.Table, name: str, source_sha256: str, rewards: list[_Rewards],
                 ref_model: ReferenceModel | None) -> tuple[pa.Table, dict[str, int]]:
    """The score columns of one generate shard (``table`` holds at least ``_SCORED``, and
    ``_REFERENCE_TOKENS`` with a reference model), with ``group_id`` first for the stats."""
    per_scorer, counts = [], {"scorer_errors": 0, "unparseable": 0}
    details: dict[str, pa.ChunkedArray] = {}
    for r in rewards:
        values, errors, unparseable, detail = r.get(name, table, source_sha256)
        per_scorer.append((r.cfg, values))
        if detail is not None:
            details |= {judge_column(r.cfg.name, c): detail[c] for c in detail.column_names}
        counts["scorer_errors"] += errors
        counts["unparseable"] += unparseable
    reward = _combine([(c.weight, v) for c, v in per_scorer])
    try:
        adv = advantages.compute(table["group_id"], reward, cfg.advantage)
    except ValueError as e:  # a shard not written by generate (groups split, ids missing)
        raise DataError(f"generate shard {name}: {e}; re-run generate with --force") from None
    keep = adv.reward_valid
    if cfg.advantage.degenerate == "drop":
        keep = pc.and_(keep, pc.invert(adv.degenerate))
    ref_lp, ref_ref_lp, ref_rej_lp = _reference_logprobs(table, ref_model)
    columns = {"group_id": table["group_id"], "reward": reward, "reward_valid": adv.reward_valid,
               "advantage": adv.advantage, "reference_advantage": adv.reference_advantage,
               "degenerate": adv.degenerate, "keep": keep, "ref_logprobs": ref_lp,
               "ref_reference_logprobs": ref_ref_lp, "ref_reference_rejected_logprobs": ref_rej_lp}
    for c, v in per_scorer:
        columns[f"reward_{c.name}"] = v
    columns |= details
    return pa.table(columns), counts


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


def _stats(scored: pa.Table, counts: dict[str, int]) -> ScoreShardStats:
    """Per-shard counts, computed from the stored columns (so a resumed shard reports the same)."""
    groups = pc.count_distinct(scored["group_id"]).as_py()
    degenerate = pc.count_distinct(pc.filter(scored["group_id"], scored["degenerate"])).as_py()
    sizes = pc.value_counts(scored["group_id"]).field("counts")
    return ScoreShardStats(
        rows=scored.num_rows,
        groups=groups,
        degenerate_groups=degenerate,
        single_sample_groups=pc.sum(pc.equal(sizes, _scalar(1, pa.int64()))).as_py() or 0,
        invalid_rewards=scored.num_rows - (pc.sum(scored["reward_valid"]).as_py() or 0),
        reward_sum=pc.sum(scored["reward"]).as_py() or 0.0,
        reward_count=pc.count(scored["reward"]).as_py(),
        kept_rows=pc.sum(scored["keep"]).as_py() or 0,
        **counts,
    )


def _check_signal(target: Target, st: ScoreStats, cfg: PipelineConfig) -> None:
    """Refuse to finish a stage whose output cannot teach anything (the shards stay committed:
    re-running after raising a threshold finishes at once)."""
    where = f"score (round {target.round}) at {target.dir.display}"
    if st.rows and st.invalid_share > cfg.score.max_invalid_share:
        raise DataError(f"{where}: {st.invalid_rewards} of {st.rows} rewards are invalid ({st.invalid_share:.0%}: "
                        f"{st.unparseable} unparseable judge answers, {st.scorer_errors} scorer errors), over "
                        f"score.max_invalid_share={cfg.score.max_invalid_share:g}; fix the scorer (judge model, "
                        "template, endpoint) or raise the share")
    # Group-relative objectives learn from the spread of rewards within a group; SFT and DPO do not.
    if cfg.train.configured.needs.group_relative and st.groups and st.degenerate_share > cfg.score.max_degenerate_share:
        raise DataError(f"{where}: {st.degenerate_groups} of {st.groups} groups are degenerate "
                        f"({st.degenerate_share:.0%}: no reward spread, so no learning signal), over "
                        f"score.max_degenerate_share={cfg.score.max_degenerate_share:g}; check the scorer and "
                        "generate.num_samples, or raise the share")


class Score(Stage):
    name = "score"
    help = "Score samples against the references and compute group advantages."
    dataset = True

    upstream = (Edge("generate"),)

    def target(self, p: Pipeline, up: Upstream) -> Target:
        section = score_section(p.cfg)
        gen = up.output("generate").require("score")
        inputs: dict[str, object] = {"generate": gen.fingerprint}
        files = {s.name: d for s in section.scorers if (d := p.scorer_files(s).digests())}
        if files:  # reward models, judge models and templates: by content, not by path
            inputs["scorer_files"] = files
        if section.reference_logprobs:
            inputs["reference_model"] = p.reference_policy().digest
        return self.make_target(p, up, keyed(section), inputs)

    def forget(self, p: Pipeline, target: Target) -> None:
        """``score --force`` recomputes the raw rewards too (a scorer may have changed in a way
        its key cannot see: a remote judge, code imported from another module)."""
        gen_key = target.upstream.output("generate").key
        for s in p.cfg.score.scorers:
            _Rewards(p, s, gen_key).dir.wipe()

    def execute(self, p: Pipeline, target: Target, part: Part) -> Outcome:
        cfg = p.cfg
        section = score_section(cfg)
        timer = Timer()
        gen_target = target.upstream.output("generate")
        gen = gen_target.require("score")
        rewards = [_Rewards(p, s, gen_target.key) for s in section.scorers]
        ref_model = None
        if section.reference_logprobs:
            from grao_pipe.reference_model import ReferenceModel

            ref_model = ReferenceModel(p.reference_policy().local_dir())
        task = progress.task("score", total=sum(s.rows for s in gen.shards), unit="rows")

        def one(shard: ShardEntry) -> ShardEntry:
            entry = _one(shard)
            st = entry.stats or {}
            task.advance(entry.rows, errors=int(st.get("scorer_errors", 0)) + int(st.get("unparseable", 0)))
            return entry

        def _one(shard: ShardEntry) -> ShardEntry:
            if target.dir.adoptable(shard.name, "score"):  # resume after a crash: keep what was committed
                entry = target.dir.committed_entry(shard.name, META_STATS)
                if entry.stats is None:  # written without its stats (an older release): count them
                    committed = target.dir.read_shard(entry, "score")
                    meta = committed.schema.metadata or {}
                    entry = entry.model_copy(update={"stats": _stats(committed, {
                        "scorer_errors": int(meta.get(META_ERRORS, b"0")),
                        "unparseable": int(meta.get(META_UNPARSEABLE, b"0"))}).model_dump()})
                return entry
            source = gen_target.dir.open_shard(shard, "generate")
            table = source.read(_SCORED + (_REFERENCE_TOKENS if ref_model is not None else []))
            scored, counts = _score_table(section, table, shard.name, shard.sha256, rewards, ref_model)
            stats = _stats(scored, counts).model_dump()
            # The score shard is the generate shard's columns (copied as encoded) and the new ones.
            entry = target.dir.write_shard(shard.name, scored.drop(["group_id"]), "score",
                                           meta={META_STATS: json.dumps(stats).encode()}, base=source)
            return entry.model_copy(update={"stats": stats})

        # Shards in parallel where the scorers are plain functions: Arrow, zstd, the Rust
        # kernels and fsync release the GIL; one thread more than cores, because part of each
        # shard is spent waiting for its fsync. Memory stays bounded by that many shards.
        # Model-based scorers already use every core: one shard at a time.
        plain = all(isinstance(s, FunctionScorer) for s in cfg.score.scorers) and ref_model is None
        threads = min((os.cpu_count() or 1) + 1, 8) if plain else 1
        try:
            with ThreadPoolExecutor(max_workers=threads) as pool:
                entries = list(pool.map(one, gen.shards))
        except BaseException:
            for r in rewards:  # a scorer that failed at once leaves no empty cache directories
                r.dir.remove_if_empty()
                StageDir(r.dir.workdir, r.dir.path.parent).remove_if_empty()
            raise
        task.finish()
        per_shard = [ScoreShardStats.model_validate(e.stats) for e in entries]
        totals = {k: sum(getattr(s, k) for s in per_shard) for k in ScoreShardStats.model_fields}
        stats = ScoreStats(
            **totals,
            mean_reward=totals["reward_sum"] / max(totals["reward_count"], 1),
            degenerate_share=totals["degenerate_groups"] / max(totals["groups"], 1),
            invalid_share=totals["invalid_rewards"] / max(totals["rows"], 1),
            scorer_shards_computed={r.cfg.name: r.computed for r in rewards},
            seconds=round(timer.seconds, 3),
        )
        _check_signal(target, stats, cfg)
        sources = {"scorers": {s.name: getattr(s, "model", None) or getattr(s, "path", None) or getattr(s, "function", None)
                               for s in cfg.score.scorers}}
        return Outcome(target, False, target.commit(ScoreManifest, entries, stats, sources), timer.seconds)

    def summary(self, o: Outcome) -> list[str]:
        assert isinstance(o.manifest, ScoreManifest)
        st = o.manifest.stats
        return [f"mean reward {st.mean_reward:.4f}; degenerate groups {st.degenerate_groups} of {st.groups}; "
                f"invalid rewards {st.invalid_rewards} (scorer errors {st.scorer_errors}, unparseable {st.unparseable})"]
