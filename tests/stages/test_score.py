"""Scoring stage: the reward cache, combined scorers, bad input."""

import counting_scorer
import pyarrow.parquet as pq
import pytest
from stage_runner import run_stage

from grao_pipe.config import load_config
from grao_pipe.errors import DataError
from grao_pipe.pipeline import Pipeline

COUNTING = {"kind": "function", "name": "count", "function": "counting_scorer:score"}


def test_advantage_change_reuses_cached_rewards(tiny_config):
    cfg = load_config(tiny_config(score={"scorers": [COUNTING]}))
    run_stage("generate", cfg)
    counting_scorer.CALLS["n"] = 0
    first = run_stage("score", cfg)
    assert counting_scorer.CALLS["n"] == 48
    assert first.manifest.stats.scorer_shards_computed == {"count": 2}
    for change in (["score.advantage.mode=rank"], ["score.advantage.degenerate=drop"]):
        again = run_stage("score", load_config(tiny_config(score={"scorers": [COUNTING]}), change))
        assert not again.cached and again.manifest.stats.scorer_shards_computed == {"count": 0}
    assert counting_scorer.CALLS["n"] == 48  # the scorer never ran again


def test_score_computes_the_advantages_the_objective_reads(tiny_config):
    """GRPO declares samples-only advantages (train.grpo.advantages): score computes them instead
    of score.advantage.mode, under another key, from the same cached rewards; with
    train.grpo.advantages=score it reads the configured mode (the GRAO score output)."""
    import polars as pl

    from grao_pipe.advantages import polars_reference
    from grao_pipe.config import AdvantageConfig

    grao = load_config(tiny_config(score={"scorers": [COUNTING]}))
    grpo = load_config(tiny_config(score={"scorers": [COUNTING]}),
                       ["train.objective=grpo", "score.max_degenerate_share=1"])
    run_stage("generate", grao)
    counting_scorer.CALLS["n"] = 0
    ref_in_group, samples_only = run_stage("score", grao), run_stage("score", grpo)
    assert counting_scorer.CALLS["n"] == 48 and samples_only.manifest.stats.scorer_shards_computed == {"count": 0}
    assert ref_in_group.target.key != samples_only.target.key
    assert samples_only.target.config["advantage"]["mode"] == "samples_only"
    table = pl.concat([pl.read_parquet(f) for f in sorted(samples_only.target.dir.path.glob("shard-*.parquet"))])
    expected = polars_reference(table.select("group_id", "reward"), AdvantageConfig(mode="samples_only"))
    assert table["advantage"].to_list() == pytest.approx(expected["advantage"].to_list(), abs=1e-9)
    as_configured = load_config(tiny_config(score={"scorers": [COUNTING]}),
                                ["train.objective=grpo", "train.grpo.advantages=score"])
    assert Pipeline(as_configured).target("score", 1).key == ref_in_group.target.key


def test_weighted_combination_and_invalid_rows(tiny_config):
    scorers = [
        {"kind": "function", "name": "arith", "function": "grao_pipe.tasks.arith:score", "weight": 2.0},
        {"kind": "function", "name": "flaky", "function": "counting_scorer:fails_on_odd_length", "weight": 1.0},
    ]
    cfg = load_config(tiny_config(score={"scorers": scorers, "max_invalid_share": 1.0}))
    run_stage("generate", cfg)
    out = run_stage("score", cfg)
    t = pq.read_table(sorted(out.target.dir.path.glob("shard-*.parquet"))[0]).to_pylist()
    for row in t:
        if row["reward_flaky"] is None:
            assert row["reward"] is None and not row["reward_valid"] and row["advantage"] == 0.0
        else:
            assert row["reward"] == pytest.approx(2 * row["reward_arith"] + 0.5)
    stats = out.manifest.stats
    assert stats.scorer_errors == stats.invalid_rewards > 0
    # At the default share, a scorer that fails this often stops the stage (exit 5), naming it.
    strict = load_config(tiny_config(score={"scorers": scorers}), ["score.advantage.eps=0.001"])
    with pytest.raises(DataError, match=rf"{stats.invalid_rewards} of 48 rewards are invalid .*{stats.scorer_errors} "
                                        r"scorer errors\), over score.max_invalid_share=0.5"):
        run_stage("score", strict)
    assert Pipeline(strict).target("score", 1).manifest() is None


def test_corrupted_generate_shard_is_an_error(tiny_config):
    cfg = load_config(tiny_config())
    gen = run_stage("generate", cfg)
    shard = next(gen.target.dir.path.glob("shard-*.parquet"))
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(DataError, match="checksum mismatch"):
        run_stage("score", cfg)
    assert Pipeline(cfg).target("score", 1).manifest() is None  # nothing looks complete


def test_single_sample_groups_are_degenerate_and_counted(tiny_config):
    cfg = load_config(tiny_config(generate={"num_samples": 1}, train={"objective": "sft"}))
    run_stage("generate", cfg)
    stats = run_stage("score", cfg).manifest.stats
    assert stats.single_sample_groups == stats.degenerate_groups == stats.groups == 12


def test_rejected_answers_are_tokenized_and_scored_by_the_reference_model(tiny_config, tmp_path):
    """generate stores the dataset's rejected answer + EOS as token ids; score adds its
    reference-model log-probs, one per token, the same on every row of a group."""
    from grao_pipe.generation.tokenizer import PolicyTokenizer
    from grao_pipe.reference_model import ReferenceModel

    cfg = load_config(tiny_config(data={"prompts": "builtin:sums_train"}, score={"reference_logprobs": True}))
    run_stage("generate", cfg)
    out = run_stage("score", cfg)
    rows = [r for p in sorted(out.target.dir.path.glob("shard-*.parquet")) for r in pq.read_table(p).to_pylist()]
    model_dir = Pipeline(cfg).policy(1).local_dir()
    tok = PolicyTokenizer(model_dir)
    for r in rows:
        assert r["reference_rejected_token_ids"] == tok.reference_ids(r["reference_rejected"])
    first: dict = {}
    for r in rows:
        first.setdefault(r["group_id"], r)
        assert r["ref_reference_rejected_logprobs"] == first[r["group_id"]]["ref_reference_rejected_logprobs"]
    r = rows[0]
    expected = ReferenceModel(model_dir).token_logps([r["prompt_token_ids"]], [r["reference_rejected_token_ids"]])[0]
    assert r["ref_reference_rejected_logprobs"] == pytest.approx(expected, abs=1e-5)
    # A prompt set without rejected answers: null columns.
    plain = load_config(tiny_config(score={"reference_logprobs": True}), [f"workdir={tmp_path / 'plain'}"])
    run_stage("generate", plain)
    table = pq.read_table(next(run_stage("score", plain).target.dir.path.glob("shard-*.parquet")))
    assert table["reference_rejected_token_ids"].null_count == table.num_rows
    assert table["ref_reference_rejected_logprobs"].null_count == table.num_rows


def test_score_output_equals_the_row_rule_and_the_polars_advantages(tiny_config):
    """What the vectorised, two-threaded stage writes equals the row-by-row reward rule and the
    independent Polars advantage reference, row for row (its content is unchanged)."""
    import polars as pl

    from grao_pipe import advantages
    from grao_pipe.tasks.arith import score_one

    cfg = load_config(tiny_config(data={"limit": 40}, generate={"prompts_per_shard": 8}))
    gen = run_stage("generate", cfg)
    out = run_stage("score", cfg)
    assert len(out.manifest.shards) == 5
    for shard in out.manifest.shards:
        got = pl.from_arrow(pq.read_table(out.target.dir.path / shard.name))
        src = pl.from_arrow(pq.read_table(gen.target.dir.path / shard.name))
        want = [score_one(p, o, y) for p, o, y in zip(src["prompt"], src["response"], src["reference"], strict=True)]
        assert got["reward"].to_list() == want
        ref = advantages.polars_reference(src.with_columns(reward=pl.Series(want)), cfg.score.advantage)
        assert got["advantage"].to_list() == pytest.approx(ref["advantage"].to_list(), abs=1e-12)
        assert got["reference_advantage"].to_list() == pytest.approx(ref["reference_advantage"].to_list(), abs=1e-12)
        assert got.drop([c for c in got.columns if c not in src.columns]).equals(src)  # generate's columns as they were
