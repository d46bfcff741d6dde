"""Scoring stage: the reward cache, combined scorers, bad input."""

import counting_scorer
import pyarrow.parquet as pq
import pytest

from grao_pipe.config import load_config
from grao_pipe.errors import DataError
from grao_pipe.stages import generate, score

COUNTING = {"kind": "function", "name": "count", "function": "counting_scorer:score"}


def test_advantage_change_reuses_cached_rewards(tiny_config):
    cfg = load_config(tiny_config(score={"scorers": [COUNTING]}))
    generate.run(cfg)
    counting_scorer.CALLS["n"] = 0
    first = score.run(cfg)
    assert counting_scorer.CALLS["n"] == 48
    assert first.manifest.data["stats"]["scorer_shards_computed"] == {"count": 2}
    for change in (["score.advantage.mode=rank"], ["score.advantage.degenerate=drop"]):
        again = score.run(load_config(tiny_config(score={"scorers": [COUNTING]}), change))
        assert not again.cached and again.manifest.data["stats"]["scorer_shards_computed"] == {"count": 0}
    assert counting_scorer.CALLS["n"] == 48  # the scorer never ran again


def test_weighted_combination_and_invalid_rows(tiny_config):
    scorers = [
        {"kind": "function", "name": "arith", "function": "grao_pipe.tasks.arith:score", "weight": 2.0},
        {"kind": "function", "name": "flaky", "function": "counting_scorer:fails_on_odd_length", "weight": 1.0},
    ]
    cfg = load_config(tiny_config(score={"scorers": scorers}))
    generate.run(cfg)
    out = score.run(cfg)
    t = pq.read_table(sorted(out.ref.directory.glob("shard-*.parquet"))[0]).to_pylist()
    for row in t:
        if row["reward_flaky"] is None:
            assert row["reward"] is None and not row["reward_valid"] and row["advantage"] == 0.0
        else:
            assert row["reward"] == pytest.approx(2 * row["reward_arith"] + 0.5)
    stats = out.manifest.data["stats"]
    assert stats["scorer_errors"] == stats["invalid_rewards"] > 0


def test_corrupted_generate_shard_is_an_error(tiny_config):
    cfg = load_config(tiny_config())
    gen = generate.run(cfg)
    shard = next(gen.ref.directory.glob("shard-*.parquet"))
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(DataError, match="checksum mismatch"):
        score.run(cfg)
    assert score.score_ref(cfg, 1).manifest() is None  # nothing looks complete


def test_single_sample_groups_are_degenerate_and_counted(tiny_config):
    cfg = load_config(tiny_config(generate={"num_samples": 1}))
    generate.run(cfg)
    stats = score.run(cfg).manifest.data["stats"]
    assert stats["single_sample_groups"] == stats["degenerate_groups"] == stats["groups"] == 12


def test_rejected_answers_are_tokenized_and_scored_by_the_reference_model(tiny_config):
    """generate stores the dataset's rejected answer + EOS as token ids; score adds its
    reference-model log-probs, one per token, the same on every row of a group."""
    from grao_pipe.generation.tokenizer import PolicyTokenizer
    from grao_pipe.reference_model import ReferenceModel
    from grao_pipe.stages.common import base_model_dir

    cfg = load_config(tiny_config(data={"prompts": "builtin:sums_train"}, score={"reference_logprobs": True}))
    generate.run(cfg)
    out = score.run(cfg)
    rows = [r for s in out.manifest.shards for r in pq.read_table(out.ref.directory / s["name"]).to_pylist()]
    tok = PolicyTokenizer(base_model_dir(cfg))
    ref_model = ReferenceModel(base_model_dir(cfg))
    for r in rows:
        assert r["reference_rejected_token_ids"] == tok.reference_ids(r["rejected"])
    first = {}
    for r in rows:
        first.setdefault(r["group_id"], r)
        assert r["ref_reference_rejected_logprobs"] == first[r["group_id"]]["ref_reference_rejected_logprobs"]
    r = rows[0]
    expected = ref_model.token_logps([r["prompt_token_ids"]], [r["reference_rejected_token_ids"]])[0]
    assert r["ref_reference_rejected_logprobs"] == pytest.approx(expected, abs=1e-5)
    # A prompt set without rejected answers: null columns.
    plain = load_config(tiny_config(score={"reference_logprobs": True}), ["workdir=" + str(out.ref.directory.parent.parent) + "-plain"])
    generate.run(plain)
    table = pq.read_table(next(score.run(plain).ref.directory.glob("shard-*.parquet")))
    assert table["reference_rejected_token_ids"].null_count == table["ref_reference_rejected_logprobs"].null_count == table.num_rows
