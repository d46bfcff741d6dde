"""Generation stage: sharded workers with a merge, backends, over-long prompts, bad input."""

import pyarrow.parquet as pq
import pytest
from stage_runner import run_stage, stage_dir

from grao_pipe.config import load_config
from grao_pipe.errors import InputError
from grao_pipe.openai_client import EndpointError
from grao_pipe.schemas import MANIFEST_NAME


def _rows(directory):
    return sorted((r["group_id"], r["sample_idx"]) for p in directory.glob("shard-*.parquet")
                  for r in pq.read_table(p, columns=["group_id", "sample_idx"]).to_pylist())


def test_two_workers_split_shards_and_the_last_one_merges(tiny_config):
    path = tiny_config(generate={"prompts_per_shard": 3})  # 12 prompts -> 4 shards
    cfg = load_config(path)
    a = run_stage("generate", cfg, part=(0, 2))
    assert a.manifest is None and not (a.target.dir.path / MANIFEST_NAME).exists()
    assert sorted(p.name for p in a.target.dir.path.glob("shard-*")) == [
        "shard-00000-of-00004.parquet", "shard-00002-of-00004.parquet"]
    b = run_stage("generate", cfg, part=(1, 2))
    assert b.manifest is not None and b.manifest.rows == 48
    single = run_stage("generate", load_config(path, [f"workdir={a.target.dir.path.parent.parent}-single"]))
    assert _rows(b.target.dir.path) == _rows(single.target.dir.path)
    # Same config and seed, same samples, whichever worker drew them.
    for p in b.target.dir.path.glob("shard-*.parquet"):
        assert pq.read_table(p).equals(pq.read_table(single.target.dir.path / p.name))


def test_overlong_prompts_are_skipped_or_truncated_and_counted(tiny_config):
    skip = run_stage("generate", load_config(tiny_config(), ["generate.max_prompt_tokens=3"]))
    # "a+b=" is 4 tokens (digits split): every prompt is too long.
    assert skip.manifest.stats.prompts_skipped_overlong == 12
    assert skip.manifest.rows == 0
    cut = run_stage("generate", load_config(tiny_config(), ["generate.max_prompt_tokens=3",
                                                   "generate.overlong_prompt=truncate"]))
    st = cut.manifest.stats
    assert st.prompts_truncated == 12 and cut.manifest.rows == 48
    first = pq.read_table(next(cut.target.dir.path.glob("shard-*.parquet"))).to_pylist()[0]
    assert len(first["prompt_token_ids"]) == 3


def test_unknown_model_path(tiny_config, tmp_path):
    with pytest.raises(InputError, match="not a Hugging Face model directory"):
        run_stage("generate", load_config(tiny_config(), [f"model.path={tmp_path / 'nope'}"]))


def test_openai_backend_against_a_real_server(tiny_config, openai_server):
    base_url, model = openai_server
    cfg = load_config(tiny_config(generate={"num_samples": 2, "prompts_per_shard": 6}, data={"limit": 6}),
                      ["generate.backend=openai", f"generate.base_url={base_url}", f"model.path={model}",
                       f"generate.served_model={model}", "generate.concurrency=4"])
    out = run_stage("generate", cfg)
    rows = pq.read_table(next(out.target.dir.path.glob("shard-*.parquet"))).to_pylist()
    assert len(rows) == 12 and {r["backend"] for r in rows} == {"openai"}
    assert len({r["seed"] for r in rows}) == 12  # one seed per request
    for r in rows:
        # The local tokenizer's ids must decode back to the server's text.
        assert isinstance(r["response"], str) and r["finish_reason"] in ("stop", "length")
        assert r["behaviour_logprobs"] is None or len(r["behaviour_logprobs"]) == len(r["response_token_ids"])


def test_server_down_keeps_finished_shards(tiny_config, openai_server, tmp_path):
    base_url, model = openai_server
    over = ["generate.backend=openai", f"model.path={model}", f"generate.served_model={model}",
            "generate.max_retries=1", "generate.num_samples=1"]
    cfg = load_config(tiny_config(generate={"prompts_per_shard": 6}), [*over, f"generate.base_url={base_url}"])
    done = run_stage("generate", cfg)
    # Now the same work against a dead server, after deleting one shard and the manifest.
    (done.target.dir.path / MANIFEST_NAME).unlink()
    kept = sorted(done.target.dir.path.glob("shard-*.parquet"))[0]
    sorted(done.target.dir.path.glob("shard-*.parquet"))[1].unlink()
    dead = load_config(tiny_config(generate={"prompts_per_shard": 6}), [*over, "generate.base_url=http://127.0.0.1:9/v1"])
    # The server URL is not part of the cache key (it does not change what is sampled).
    assert stage_dir("generate", dead) == done.target.dir.path
    before = kept.stat().st_mtime_ns
    with pytest.raises(EndpointError, match="no answer after 2 attempts"):
        run_stage("generate", dead)
    assert kept.stat().st_mtime_ns == before and not (done.target.dir.path / MANIFEST_NAME).exists()
    assert len(_rows(done.target.dir.path)) == 6  # the committed shard is intact; nothing partial
    assert run_stage("generate", cfg).manifest.rows == 12  # the server is back: resume completes
