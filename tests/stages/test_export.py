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

    export(d, m, "preference", tmp_path / "bw", pairs="best-worst", keep_truncated=True)
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
    export(d, m, "kto", tmp_path / "kto", keep_truncated=True)
    kto = pq.read_table(tmp_path / "kto" / "train.parquet")
    assert kto.column_names == ["prompt", "completion", "label", "finish_reason"] and kto.num_rows == m.rows
    table = pl.from_arrow(d.read_table(m))
    assert sum(kto["label"].to_pylist()) == table.filter(pl.col("reward") >= 0).height

    export(d, m, "prompt-completion", tmp_path / "pc")
    pc = pq.read_table(tmp_path / "pc" / "train.parquet").to_pylist()
    assert len(pc) == len(CHAT) and set(pc[0]) == {"prompt", "completion", "finish_reason"}
    with pytest.raises(Exception, match="not empty"):
        export(d, m, "kto", tmp_path / "kto")  # never overwrites


def test_truncated_samples_are_not_chosen_unless_kept(scored, tmp_path):
    """3 new tokens: most samples stop at the limit (finish_reason length). They are never a
    chosen answer, a completion or a desirable KTO row unless --keep-truncated, which marks them."""
    out, workdir = scored
    d, m = find(workdir, out.target.key[:8])
    table = pl.from_arrow(d.read_table(m))
    truncated = table.filter(pl.col("finish_reason") == "length")
    assert truncated.height > 0
    export(d, m, "preference", tmp_path / "bw", pairs="best-worst")
    bw = pq.read_table(tmp_path / "bw" / "train.parquet")
    assert set(bw["chosen_finish_reason"].to_pylist()) <= {"stop"}
    kept = export(d, m, "preference", tmp_path / "bw-all", pairs="best-worst", keep_truncated=True)
    assert kept.rows >= bw.num_rows
    assert "length" in pq.read_table(tmp_path / "bw-all" / "train.parquet")["chosen_finish_reason"].to_pylist()

    export(d, m, "kto", tmp_path / "kto")
    kto = pq.read_table(tmp_path / "kto" / "train.parquet").to_pylist()
    assert not [r for r in kto if r["label"] and r["finish_reason"] == "length"]
    assert len(kto) == m.rows - truncated.filter(pl.col("reward") >= 0).height

    export(d, m, "prompt-completion", tmp_path / "pc")
    pc = pq.read_table(tmp_path / "pc" / "train.parquet").to_pylist()
    assert len(pc) == len(CHAT) and {r["finish_reason"] for r in pc} <= {"stop", None}
    assert "truncated samples" in (tmp_path / "pc" / "README.md").read_text()


def test_kto_threshold_and_a_missing_label_warns(scored, tmp_path):
    out, workdir = scored
    d, m = find(workdir, out.target.key[:8])
    top = pl.from_arrow(d.read_table(m))["reward"].max()
    res = export(d, m, "kto", tmp_path / "k1", kto_threshold=top + 1, keep_truncated=True)
    assert not any(pq.read_table(tmp_path / "k1" / "train.parquet")["label"].to_pylist())
    assert len(res.warnings) == 1 and "every KTO label is False" in res.warnings[0]
    assert "label: R >= " in (tmp_path / "k1" / "README.md").read_text()


def test_lineage_in_card_and_exports(scored, tmp_path):
    out, workdir = scored
    d, m = find(workdir, out.target.key[:8])
    lin = card(d, m)["lineage"]
    assert lin["prompt_set"].endswith("chat.jsonl") and len(lin["prompt_set_sha256"]) == 64
    assert lin["model"] == "the embedded tiny model" and lin["model_digest"].startswith("tiny-")
    assert lin["scorers"][0]["function"] == "counting_scorer:score"
    export(d, m, "kto", tmp_path / "k")
    assert lin["prompt_set_sha256"] in (tmp_path / "k" / "README.md").read_text()


def test_no_empty_system_turn_in_exported_prompts(tiny_config, tmp_path):
    prompts = tmp_path / "chat.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in CHAT[:4]))
    cfg = load_config(tiny_config(data={"prompts": str(prompts), "system_prompt": "none"},
                                  score={"scorers": [COUNTING]}))
    run_stage("generate", cfg)
    out = run_stage("score", cfg)
    d, m = find(Workdir(cfg.workdir), out.target.key[:8])
    assert pl.from_arrow(d.read_table(m))["prompt_messages"][0][0]["role"] == "system"  # what the policy saw
    for fmt in ("preference", "kto", "prompt-completion"):
        export(d, m, fmt, tmp_path / fmt, pairs="dataset", keep_truncated=True)
        rows = pq.read_table(tmp_path / fmt / "train.parquet").to_pylist()
        assert rows and all(r["prompt"] and r["prompt"][0]["role"] == "user" for r in rows), fmt


def _check_trl_columns(fmt: str, table) -> None:
    """The columns and types TRL's trainers read (DPOTrainer: prompt/chosen/rejected; KTOTrainer:
    prompt/completion/label bool; SFTTrainer prompt-completion: prompt/completion), conversational:
    lists of {role, content} strings."""
    import pyarrow as pa

    def is_messages(t) -> bool:
        if not (pa.types.is_list(t) or pa.types.is_large_list(t)) or not pa.types.is_struct(t.value_type):
            return False
        fields = {f.name: f.type for f in t.value_type}
        return set(fields) == {"role", "content"} and all(pa.types.is_string(x) or pa.types.is_large_string(x)
                                                           for x in fields.values())

    need = {"preference": ["prompt", "chosen", "rejected"], "kto": ["prompt", "completion", "label"],
            "prompt-completion": ["prompt", "completion"]}[fmt]
    for name in need:
        t = table.schema.field(name).type
        if name == "label":
            assert t == pa.bool_(), (fmt, name, t)
        else:
            assert is_messages(t), (fmt, name, t)
        assert table[name].null_count == 0, (fmt, name)
    for row in table.to_pylist():
        for name in need:
            if name != "label":
                assert all(isinstance(m["content"], str) and m["role"] in ("system", "user", "assistant")
                           for m in row[name])
        for name in ("chosen", "rejected", "completion"):
            if name in row:
                assert [m["role"] for m in row[name]] == ["assistant"]


def test_every_export_has_the_columns_trl_reads(scored, tmp_path):
    out, workdir = scored
    d, m = find(workdir, out.target.key[:8])
    for fmt, pairs in (("preference", "best-worst"), ("preference", "reference-sample"), ("preference", "dataset"),
                       ("kto", "best-worst"), ("prompt-completion", "best-worst")):
        dest = tmp_path / f"{fmt}-{pairs}"
        export(d, m, fmt, dest, pairs=pairs, keep_truncated=True)
        _check_trl_columns(fmt, pq.read_table(dest / "train.parquet"))


def test_trl_reads_every_export(scored, tmp_path, tiny_model_dir):
    """Oracle: TRL's own data helpers accept each export and render it with a chat template."""
    pytest.importorskip("trl")
    datasets = pytest.importorskip("datasets")
    from transformers import AutoTokenizer
    from trl.data_utils import is_conversational, maybe_apply_chat_template

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    out, workdir = scored
    d, m = find(workdir, out.target.key[:8])
    for fmt, pairs in (("preference", "dataset"), ("kto", "best-worst"), ("prompt-completion", "best-worst")):
        dest = tmp_path / fmt
        export(d, m, fmt, dest, pairs=pairs, keep_truncated=True)
        ds_ = datasets.load_dataset(str(dest))["train"]
        ex = ds_[0]
        assert is_conversational(ex)
        rendered = maybe_apply_chat_template(ex, tok)
        assert isinstance(rendered["prompt"], str) and rendered["prompt"]
