"""Stage outputs are plain Parquet datasets other tools open as they are, and `datasets export`
writes TRL's formats and `datasets`-loadable directories with a dataset card."""

import json

import duckdb
import polars as pl
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from stage_runner import run_stage

from grao_pipe.config import load_config
from grao_pipe.datasets import card, card_markdown, export, find
from grao_pipe.storage import Workdir

COUNTING = {"kind": "function", "name": "count", "function": "counting_scorer:score"}
CHAT = [
    {"messages": [{"role": "user", "content": f"{a}+{b}="}], "reference": str(a + b), "rejected": str(a + b + 1)}
    for a in range(3) for b in range(4)
]


@pytest.fixture
def scored(tiny_config, tmp_path):
    """A finished score dataset of chat prompts with a reference and a rejected answer each."""
    prompts = tmp_path / "chat.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in CHAT))
    cfg = load_config(tiny_config(data={"prompts": str(prompts)}, score={"scorers": [COUNTING]}))
    run_stage("generate", cfg)
    out = run_stage("score", cfg)
    return out, Workdir(cfg.workdir)


def test_a_stage_directory_opens_with_other_tools(scored):
    out, _ = scored
    d = out.target.dir.path
    rows = out.manifest.rows
    assert ds.dataset(d).to_table().num_rows == rows  # sidecars start with "_": skipped
    assert pq.read_table(d).num_rows == rows
    assert pl.scan_parquet(f"{d}/*.parquet").select(pl.len()).collect().item() == rows
    assert duckdb.sql(f"select count(*) from read_parquet('{d}/*.parquet')").fetchall() == [(rows,)]
    datasets = pytest.importorskip("datasets")
    loaded = datasets.load_dataset(str(d))["train"]
    assert loaded.num_rows == rows and "reference_rejected" in loaded.column_names


def test_dataset_card_is_read_by_datasets(scored):
    datasets = pytest.importorskip("datasets")
    out, workdir = scored
    d, m = find(workdir, out.target.key[:8])
    d.write_file("README.md", card_markdown(d, m, card(d, m)).encode())
    loaded = datasets.load_dataset(str(d.path))["train"]
    assert loaded.num_rows == m.rows
    # The card's features are the data contract's types, nested and list ones included.
    assert loaded.features == datasets.Features.from_arrow_schema(pq.read_schema(d.member(m.shards[0].name)))
    assert "features:" in (d.path / "README.md").read_text()


def test_export_dataset_directory_with_its_card(scored, tmp_path):
    datasets = pytest.importorskip("datasets")
    out, workdir = scored
    d, m = find(workdir, out.target.key[:8])
    result = export(d, m, "dataset", tmp_path / "ds")
    assert result.rows == m.rows
    readme = (tmp_path / "ds" / "README.md").read_text()
    assert readme.startswith("---\nconfigs:") and "grao-pipe score dataset" in readme
    assert datasets.load_dataset(str(tmp_path / "ds"))["train"].num_rows == m.rows


def test_trl_preference_pairs_respect_the_rewards(scored, tmp_path):
    out, workdir = scored
    d, m = find(workdir, out.target.key[:8])
    table = pl.from_arrow(d.read_table(m))

    export(d, m, "preference", tmp_path / "bw", pairs="best-worst")
    bw = pq.read_table(tmp_path / "bw" / "train.parquet").to_pylist()
    spread = table.group_by("group_id").agg(pl.col("reward").max() > pl.col("reward").min()).to_series(1).sum()
    assert len(bw) == spread > 0
    row = bw[0]  # conversational: the prompt's messages, one assistant turn each
    assert row["prompt"][0]["role"] == "user" and row["chosen"][0]["role"] == "assistant"
    by_text = {(r["group_id"], r["response"]): r["reward"] for r in table.to_dicts()}
    for r in bw:
        assert by_text[(r["group_id"], r["chosen"][0]["content"])] > by_text[(r["group_id"], r["rejected"][0]["content"])]

    export(d, m, "preference", tmp_path / "rs", pairs="reference-sample")
    rs = pq.read_table(tmp_path / "rs" / "train.parquet").to_pylist()
    assert len(rs) == table.filter(pl.col("reward") < 0).height  # only samples judged worse

    export(d, m, "preference", tmp_path / "dp", pairs="dataset")
    dp = pq.read_table(tmp_path / "dp" / "train.parquet").to_pylist()
    assert len(dp) == len(CHAT)
    assert {int(r["rejected"][0]["content"]) - int(r["chosen"][0]["content"]) for r in dp} == {1}


def test_trl_kto_and_prompt_completion(scored, tmp_path):
    out, workdir = scored
    d, m = find(workdir, out.target.key[:8])
    export(d, m, "kto", tmp_path / "kto")
    kto = pq.read_table(tmp_path / "kto" / "train.parquet")
    assert kto.column_names == ["prompt", "completion", "label"] and kto.num_rows == m.rows
    table = pl.from_arrow(d.read_table(m))
    assert sum(kto["label"].to_pylist()) == table.filter(pl.col("reward") >= 0).height

    export(d, m, "prompt-completion", tmp_path / "pc")
    pc = pq.read_table(tmp_path / "pc" / "train.parquet").to_pylist()
    assert len(pc) == len(CHAT) and set(pc[0]) == {"prompt", "completion"}
    with pytest.raises(Exception, match="not empty"):
        export(d, m, "kto", tmp_path / "kto")  # never overwrites
