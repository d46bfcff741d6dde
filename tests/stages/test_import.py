"""generate.backend=import on hand-written files: OpenAI Batch / vLLM run_batch (chat, per-sample
requests, failures, duplicates, missing and orphan lines, out of order, Unicode, log-probs as
token ids and as token strings), TRL JSONL (standard and conversational) and Parquet."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from openai.types import Completion
from openai.types.chat import ChatCompletion
from stage_runner import run_stage

from grao_pipe.config import load_config
from grao_pipe.errors import ConfigError, InputError
from grao_pipe.generation.tokenizer import PolicyTokenizer
from grao_pipe.prompts import Prompt
from grao_pipe.schemas import QUARANTINE_NAME

CHAT = {"q1": "Add 1 and 2.", "q2": "Grüße! 2+2?", "q3": "日本 5+2?", "q4": "Add 3 and 3.", "q5": "Add 4 and 4.",
        "q6": "Add 1 and 1."}
REFS = {"q1": "3", "q2": "4", "q3": "7", "q4": "6", "q5": "8", "q6": "2"}
TEXTS = ["3", "3!", "4", "Grüße4", "5", "日本7", "7", "2"]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """A tiny model whose tokenizer knows every string of these tests (Unicode included)."""
    from grao_pipe.config import TinyModelConfig
    from grao_pipe.models.tiny import build_tiny_model

    corpus = [*CHAT.values(), *REFS.values(), *TEXTS, "user: assistant: 1+2= 2+2= 5+2="]
    return build_tiny_model(TinyModelConfig(), corpus, tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def tok(model) -> PolicyTokenizer:
    return PolicyTokenizer(model)


def _render(tok: PolicyTokenizer, messages: list[tuple[str, str]]) -> str:
    return tok.render(Prompt(0, None, tuple(messages), ""))


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def _lp_strings(tok: PolicyTokenizer, text: str, eos: bool) -> dict:
    """logprobs.content as a server with the policy's tokenizer returns it (token strings)."""
    ids = tok.encode(text) + ([tok.eos_id] if eos else [])
    return {"content": [{"token": tok.tok.decode([i]), "logprob": -0.1 * (k + 1), "bytes": list(tok.tok.decode([i]).encode()),
                         "top_logprobs": []} for k, i in enumerate(ids)]}


def _lp_ids(ids: list[int]) -> dict:
    """vLLM's form with return_tokens_as_token_ids: ``token_id:N``."""
    return {"content": [{"token": f"token_id:{i}", "logprob": -0.5, "bytes": None, "top_logprobs": []} for i in ids]}


def _choice(k: int, text: str | None, finish: str = "stop", lp: dict | None = None) -> dict:
    return {"index": k, "message": {"role": "assistant", "content": text}, "logprobs": lp, "finish_reason": finish}


def _ok(cid: str, choices: list[dict], model: str = "tiny-sft") -> dict:
    body = {"id": f"chatcmpl-{cid}", "object": "chat.completion", "created": 1, "model": model, "choices": choices,
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
    body = ChatCompletion.model_validate(body).model_dump(mode="json")  # the API's own shape (oracle)
    return {"id": f"batch_req_{cid}", "custom_id": cid, "response": {"status_code": 200, "request_id": "r", "body": body},
            "error": None}


def _request(cid: str, text: str, n: int) -> dict:
    return {"custom_id": cid, "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "tiny-sft", "messages": [{"role": "user", "content": text}], "n": n, "max_tokens": 8,
                     "temperature": 0.9, "logprobs": True, "seed": 7}}


def _batch_files(root: Path, tok: PolicyTokenizer, shuffle: bool = False) -> tuple[Path, Path, Path]:
    prompts = _jsonl(root / "prompts.jsonl", [{"id": k, "messages": [{"role": "user", "content": v}], "reference": REFS[k]}
                                              for k, v in CHAT.items()])
    requests = [_request("q1", CHAT["q1"], 3), *(_request(f"q2:{j}", CHAT["q2"], 1) for j in range(3)),
                _request("q3", CHAT["q3"], 2), _request("q4", CHAT["q4"], 2), _request("q5", CHAT["q5"], 2),
                _request("q6", CHAT["q6"], 2), _request("zz", "Who?", 1)]
    eos = tok.eos_id
    results = [
        _ok("q3", [_choice(0, "日本7"), _choice(1, "7", "length")]),
        _ok("q2:1", [_choice(0, "4")]),  # no log-probs
        _ok("q1", [_choice(0, "3", lp=_lp_ids([*tok.encode("3"), eos])),  # token ids, EOS included
                   _choice(1, "3!", lp=_lp_strings(tok, "3!", eos=True)),  # token strings + EOS
                   _choice(2, "4", "length", lp=_lp_strings(tok, "4", eos=False))]),
        {"id": "batch_req_q4", "custom_id": "q4", "response": {"status_code": 500, "request_id": "r",
                                                               "body": {"error": {"message": "overloaded"}}}, "error": None},
        _ok("q2:0", [_choice(0, "Grüße4", lp=_lp_strings(tok, "Grüße4", eos=False))]),  # no EOS entry: unaligned
        _ok("q2:2", [_choice(0, "5", lp=_lp_ids([999, 998]))]),  # another tokenizer's ids: unaligned
        _ok("q6", [_choice(0, "2"), _choice(1, None)]),  # a choice without text: one usable completion
        _ok("q2:1", [_choice(0, "a second answer")]),  # duplicate line: the first is kept
        {"id": "batch_req_x", "custom_id": "nobody", "response": None, "error": {"code": "x", "message": "lost"}},
    ]
    if shuffle:
        random.Random(3).shuffle(results)
    return prompts, _jsonl(root / "requests.jsonl", requests), _jsonl(root / "results.jsonl", results)


def _config(tiny_config, model: Path, prompts: Path, imp: dict, **over: object):
    gen = {"backend": "import", "import": imp, "prompts_per_shard": 4}
    return load_config(tiny_config(data={"prompts": str(prompts), "max_quarantine_share": 0.6}, generate=gen),
                       [f"model.path={model}", *(f"{k}={v}" for k, v in over.items())])


def _rows(out) -> list[dict]:
    return pa.concat_tables([pq.read_table(p) for p in sorted(out.target.dir.path.glob("shard-*.parquet"))]).to_pylist()


def test_openai_batch_groups_quarantines_and_aligns_logprobs(tiny_config, model, tok, tmp_path):
    prompts, requests, results = _batch_files(tmp_path, tok)
    cfg = _config(tiny_config, model, prompts, {"format": "openai-batch", "requests": str(requests),
                                                "results": str(results)})
    out = run_stage("generate", cfg)
    rows = _rows(out)
    by = {}
    for r in rows:
        by.setdefault(r["prompt_messages"][0]["content"], []).append(r)
    assert set(by) == {CHAT["q1"], CHAT["q2"], CHAT["q3"]}
    # Per request (n choices) or per prompt (q2's three requests), in request then choice order.
    assert [r["response"] for r in by[CHAT["q1"]]] == ["3", "3!", "4"]
    assert [r["response"] for r in by[CHAT["q2"]]] == ["Grüße4", "4", "5"]
    assert [r["sample_idx"] for r in by[CHAT["q2"]]] == [0, 1, 2]
    assert [r["finish_reason"] for r in by[CHAT["q3"]]] == ["stop", "length"]
    for r in rows:
        assert r["response_token_ids"] == tok.encode(r["response"]) + ([tok.eos_id] if r["finish_reason"] == "stop" else [])
        assert r["prompt"] == _render(tok, [(m["role"], m["content"]) for m in r["prompt_messages"]])
        assert r["prompt_token_ids"] == tok.encode(r["prompt"]) and r["reference"] == REFS[_key(r)]
        assert (r["temperature"], r["max_new_tokens"], r["seed"], r["backend"]) == (pytest.approx(0.9), 8, 7, "import")
        assert r["policy_digest"].startswith("import:tiny-sft@")
    lps = [r["behaviour_logprobs"] for r in by[CHAT["q1"]]]
    assert lps[0] == pytest.approx([-0.5, -0.5])
    assert lps[1] == pytest.approx([-0.1 * (k + 1) for k in range(len(tok.encode("3!")) + 1)])
    assert lps[2] == pytest.approx([-0.1])
    assert all(r["behaviour_logprobs"] is None for r in by[CHAT["q2"]] + by[CHAT["q3"]])
    imported = out.manifest.stats.imported
    assert imported["behaviour_logprobs"] == {"kept": 3, "absent": 3, "unaligned": 2, "recomputed": False}
    assert imported["quarantined"] == {"duplicate": 0, "failed": 1, "missing": 1, "no_text": 0, "orphan": 1,
                                       "small_group": 1, "unmatched": 1}
    assert imported["models_seen"] == ["tiny-sft"] and imported["format"] == "openai-batch"
    assert imported["files"]["results"]["name"] == "results.jsonl"
    quarantine = [json.loads(x) for x in (out.target.dir.path / QUARANTINE_NAME).read_text().splitlines()]
    reasons = {(q["kind"], q.get("custom_id")) for q in quarantine}
    assert {("failed", "q4"), ("missing", "q5"), ("orphan", "nobody"), ("unmatched", "zz"), ("duplicate", "q2:1"),
            ("no_text", "q6")} <= reasons
    assert any(q["kind"] == "small_group" and "only 1 usable" in q["reason"] for q in quarantine)
    assert next(q for q in quarantine if q["kind"] == "failed")["reason"] == "request failed (status 500: overloaded)"


def _key(r: dict) -> str:
    return next(k for k, v in CHAT.items() if v == r["prompt_messages"][0]["content"])


def test_out_of_order_results_give_the_same_rows_and_the_key_follows_content_not_paths(tiny_config, model, tok,
                                                                                       tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    prompts, requests, results = _batch_files(a, tok)
    _, _, results_b = _batch_files(b, tok, shuffle=True)
    imp = {"format": "openai-batch", "requests": str(requests), "results": str(results)}
    first = run_stage("generate", _config(tiny_config, model, prompts, imp))
    shuffled = run_stage("generate", _config(tiny_config, model, prompts, {**imp, "results": str(results_b)}))
    assert first.target.key != shuffled.target.key  # other bytes, another dataset
    drop = ["policy_digest"]  # it names the files' digest
    assert [{k: v for k, v in r.items() if k not in drop} for r in _rows(first)] == \
        [{k: v for k, v in r.items() if k not in drop} for r in _rows(shuffled)]
    # The same files under other paths: the same key, so the cached output.
    moved = tmp_path / "moved.jsonl"
    moved.write_bytes(results.read_bytes())
    again = run_stage("generate", _config(tiny_config, model, prompts, {**imp, "results": str(moved)}))
    assert again.cached and again.target.key == first.target.key


def test_jsonl_standard_rows_matched_by_prompt_text(tiny_config, model, tok, tmp_path):
    prompts = _jsonl(tmp_path / "p.jsonl", [{"prompt": p, "reference": r} for p, r in
                                            (("1+2=", "3"), ("2+2=", "4"), ("5+2=", "7"))])
    data = _jsonl(tmp_path / "rollouts.jsonl", [
        {"prompt": "1+2=", "completion": "3", "logprobs": [-0.2, -0.3]},  # one per token, EOS included
        {"prompt": "2+2=", "completion": "4", "logprobs": [-0.2]},  # one short: unaligned
        {"prompt": "1+2=", "completion": "4", "finish_reason": "length", "model": "m-a"},
        {"prompt": "2+2=", "completion": "5"},
        {"prompt": "9+9=", "completion": "18"},  # in no prompt set row
    ])
    (tmp_path / "rollouts.jsonl").open("a").write("{not json\n")
    cfg = _config(tiny_config, model, prompts, {"format": "jsonl", "results": str(data)})
    out = run_stage("generate", cfg)
    rows = _rows(out)
    assert [(r["prompt"], r["response"], r["finish_reason"]) for r in rows] == [
        ("1+2=", "3", "stop"), ("1+2=", "4", "length"), ("2+2=", "4", "stop"), ("2+2=", "5", "stop")]
    assert rows[0]["behaviour_logprobs"] == pytest.approx([-0.2, -0.3]) and rows[2]["behaviour_logprobs"] is None
    assert rows[0]["temperature"] == pytest.approx(cfg.generate.temperature) and rows[0]["seed"] == -1
    imported = out.manifest.stats.imported
    assert imported["quarantined"] == {"bad_line": 1, "unmatched": 1}
    assert imported["models_seen"] == ["m-a"] and imported["behaviour_logprobs"]["unaligned"] == 1


def _conversational() -> list[dict]:
    return [
        {"prompt": [{"role": "user", "content": CHAT["q1"]}], "completion": [{"role": "assistant", "content": "3"}]},
        {"prompt": [{"role": "user", "content": CHAT["q3"]}], "completion": [{"role": "assistant", "content": "日本7"}]},
        {"prompt": [{"role": "user", "content": CHAT["q1"]}], "completion": [{"role": "assistant", "content": "4"}],
         "finish_reason": "length"},
        {"prompt": [{"role": "user", "content": CHAT["q3"]}], "completion": [{"role": "assistant", "content": "7"}]},
    ]


def _chat_prompts(root: Path, ids: bool) -> Path:
    return _jsonl(root / "chat.jsonl", [{**({"id": k} if ids else {}), "messages": [{"role": "user", "content": v}],
                                         "reference": REFS[k]} for k, v in CHAT.items()])


def test_jsonl_conversational_and_parquet_give_the_same_rows(tiny_config, model, tmp_path):
    prompts = _chat_prompts(tmp_path, ids=False)
    data = _jsonl(tmp_path / "conv.jsonl", _conversational())
    rows = [{"finish_reason": None, **r} for r in _conversational()]  # from_pylist reads the first row's keys
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "conv.parquet")
    a = run_stage("generate", _config(tiny_config, model, prompts, {"format": "jsonl", "results": str(data)}))
    b = run_stage("generate", _config(tiny_config, model, prompts, {"format": "parquet",
                                                                    "results": str(tmp_path / "conv.parquet")}))
    ra, rb = _rows(a), _rows(b)
    assert [(r["prompt_messages"][0]["content"], r["response"]) for r in ra] == [
        (CHAT["q1"], "3"), (CHAT["q1"], "4"), (CHAT["q3"], "日本7"), (CHAT["q3"], "7")]
    drop = {"policy_digest"}
    assert [{k: v for k, v in r.items() if k not in drop} for r in ra] == \
        [{k: v for k, v in r.items() if k not in drop} for r in rb]


def test_rendered_dialogue_and_custom_columns(tiny_config, model, tok, tmp_path):
    """A standard row whose prompt is the rendered chat matches the chat prompt; columns renamed."""
    prompts = _chat_prompts(tmp_path, ids=False)
    rendered = _render(tok, [("user", CHAT["q1"])])
    data = _jsonl(tmp_path / "r.jsonl", [{"q": rendered, "a": "3"}, {"q": rendered, "a": "4"}])
    cfg = _config(tiny_config, model, prompts, {"format": "jsonl", "results": str(data),
                                                "columns": {"prompt": "q", "completion": "a"}})
    rows = _rows(run_stage("generate", cfg))
    assert [(r["prompt"], r["response"]) for r in rows] == [(rendered, "3"), (rendered, "4")]


def test_too_many_unusable_records_refuse_the_import(tiny_config, model, tmp_path):
    prompts = _chat_prompts(tmp_path, ids=True)
    data = _jsonl(tmp_path / "x.jsonl", [{"prompt": [{"role": "user", "content": "Hm?"}], "completion": "3"}] * 3
                  + _conversational())
    cfg = _config(tiny_config, model, prompts, {"format": "jsonl", "results": str(data), "match": "dialogue"},
                  **{"data.max_quarantine_share": 0.2})
    with pytest.raises(InputError, match=r"x.jsonl: 3 of 7 records are unusable .*x.jsonl:1: its dialogue matches no "
                                          r"prompt.*max_quarantine_share=0.2"):
        run_stage("generate", cfg)
    missing = _config(tiny_config, model, prompts, {"format": "jsonl", "results": str(data), "columns": {"prompt": "p"}})
    with pytest.raises(InputError, match=r"no column 'p'.*generate\.import\.columns\.prompt"):
        run_stage("generate", missing)


def test_recomputed_logprobs_are_the_models(tiny_config, model, tmp_path):
    from grao_pipe.reference_model import ReferenceModel

    prompts = _chat_prompts(tmp_path, ids=False)
    data = _jsonl(tmp_path / "conv.jsonl", _conversational())
    cfg = _config(tiny_config, model, prompts, {"format": "jsonl", "results": str(data), "recompute_logprobs": True})
    out = run_stage("generate", cfg)
    rows = _rows(out)
    want = ReferenceModel(model).token_logps([r["prompt_token_ids"] for r in rows], [r["response_token_ids"] for r in rows])
    for r, w in zip(rows, want, strict=True):
        assert r["behaviour_logprobs"] == pytest.approx(w, abs=1e-5)
    assert out.manifest.stats.imported["behaviour_logprobs"]["recomputed"] is True


def test_an_objective_needing_behaviour_logprobs_names_the_import_option(tiny_config, model, tmp_path):
    from grao_pipe.stages.train import check_columns

    prompts = _jsonl(tmp_path / "p.jsonl", [{"prompt": "1+2=", "reference": "3"}, {"prompt": "2+2=", "reference": "4"}])
    data = _jsonl(tmp_path / "r.jsonl", [{"prompt": p, "completion": c} for p in ("1+2=", "2+2=") for c in "34"])
    cfg = _config(tiny_config, model, prompts, {"format": "jsonl", "results": str(data)}, **{"train.objective": "grpo"})
    run_stage("generate", cfg)
    sc = run_stage("score", cfg)
    shards = [sc.target.dir.member(s.name) for s in sc.manifest.shards]
    with pytest.raises(InputError, match=r"behaviour_logprobs.*generate\.import\.recompute_logprobs=true"):
        check_columns(cfg.train, shards)


def test_config_keys_of_the_import_section(tiny_config, tmp_path):
    base = ["generate.backend=import", "generate.import.format=jsonl", f"generate.import.results={tmp_path / 'r'}"]
    cfg = load_config(None, base)
    assert cfg.generate.import_ is not None and cfg.generate.import_.format == "jsonl"
    with pytest.raises(ConfigError, match=r"unknown config key 'generate.import.resluts'"):
        load_config(None, [*base, "generate.import.resluts=x"])
    with pytest.raises(ConfigError, match=r"generate.import.requests \(the batch input file\)"):
        load_config(None, ["generate.backend=import", "generate.import.format=openai-batch", "generate.import.results=x"])
    with pytest.raises(ConfigError, match=r"generate\.backend=import needs a generate\.import section"):
        load_config(None, ["generate.backend=import"])
    with pytest.raises(ConfigError, match=r"set generate\.backend=import"):
        load_config(None, base[1:])
    # Round 2 samples with then_backend: its generate config (and key) is a plain hf one.
    from grao_pipe.sections import keyed

    two = load_config(None, [*base, "generate.import.then_backend=hf"])
    assert keyed(two.generate.for_round(2)) == keyed(load_config(None).generate)
    assert keyed(two.generate)["import"]["format"] == "jsonl"


def test_two_shard_workers_import_what_one_does(tiny_config, model, tok, tmp_path):
    prompts, requests, results = _batch_files(tmp_path, tok)
    imp = {"format": "openai-batch", "requests": str(requests), "results": str(results)}
    one = _config(tiny_config, model, prompts, imp, **{"generate.prompts_per_shard": 1})
    whole = run_stage("generate", one)
    split = _config(tiny_config, model, prompts, imp, **{"generate.prompts_per_shard": 1,
                                                        "workdir": str(tmp_path / "split")})
    a = run_stage("generate", split, part=(0, 2))
    assert a.manifest is None  # the other worker's shards are missing
    b = run_stage("generate", split, part=(1, 2))
    assert b.manifest is not None and b.manifest.stats.imported == whole.manifest.stats.imported
    assert [s.sha256 for s in b.manifest.shards] == [s.sha256 for s in whole.manifest.shards]


def test_completions_endpoint_with_legacy_logprobs_beside_chat_requests(tiny_config, model, tok, tmp_path):
    """/v1/completions results carry ``logprobs.tokens/token_logprobs`` (vLLM: ``token_id:N``);
    a batch may mix them with chat requests."""
    prompts = _jsonl(tmp_path / "p.jsonl", [{"id": "a", "prompt": "1+2=", "reference": "3"},
                                            {"id": "b", "messages": [{"role": "user", "content": CHAT["q1"]}],
                                             "reference": "3"}])
    ids = [*tok.encode("3"), tok.eos_id]
    legacy = {"tokens": [f"token_id:{i}" for i in ids], "token_logprobs": [-0.25] * len(ids), "text_offset": [0, 1],
              "top_logprobs": None}
    body = Completion.model_validate({"id": "c", "object": "text_completion", "created": 1, "model": "m",
                                      "choices": [{"index": k, "text": "3", "finish_reason": "stop",
                                                   "logprobs": legacy if k == 0 else None} for k in range(2)]})
    requests = _jsonl(tmp_path / "rq.jsonl", [
        {"custom_id": "a", "method": "POST", "url": "/v1/completions", "body": {"model": "m", "prompt": "1+2=", "n": 2}},
        _request("b", CHAT["q1"], 2)])
    results = _jsonl(tmp_path / "rs.jsonl", [
        _ok("b", [_choice(0, "3"), _choice(1, "4")]),
        {"id": "x", "custom_id": "a", "response": {"status_code": 200, "body": body.model_dump(mode="json")}, "error": None}])
    out = run_stage("generate", _config(tiny_config, model, prompts, {"format": "openai-batch", "requests": str(requests),
                                                                      "results": str(results)}))
    rows = _rows(out)
    assert [(r["prompt_idx"], r["response"]) for r in rows] == [(0, "3"), (0, "3"), (1, "3"), (1, "4")]
    assert rows[0]["behaviour_logprobs"] == pytest.approx([-0.25] * len(ids)) and rows[1]["behaviour_logprobs"] is None
    assert rows[0]["temperature"] == pytest.approx(1.0) and rows[0]["max_new_tokens"] == 3  # API / config defaults


def test_gzipped_jsonl_and_a_missing_file(tiny_config, model, tmp_path):
    import gzip

    prompts = _chat_prompts(tmp_path, ids=False)
    data = tmp_path / "conv.jsonl.gz"
    data.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in _conversational()).encode()))
    rows = _rows(run_stage("generate", _config(tiny_config, model, prompts, {"format": "jsonl", "results": str(data)})))
    assert [r["response"] for r in rows] == ["3", "4", "日本7", "7"]
    with pytest.raises(InputError, match=r"generate\.import\.results: .*nope\.jsonl does not exist"):
        run_stage("generate", _config(tiny_config, model, prompts, {"format": "jsonl", "results": str(tmp_path / "nope.jsonl")}))


def test_a_dialogue_two_prompt_rows_share_goes_to_the_first(tiny_config, model, tmp_path):
    prompts = _jsonl(tmp_path / "p.jsonl", [{"prompt": "1+2=", "reference": "3"}, {"prompt": "1+2=", "reference": "three"},
                                            {"prompt": "2+2=", "reference": "4"}])
    data = _jsonl(tmp_path / "r.jsonl", [{"prompt": "1+2=", "completion": c} for c in "345"])
    rows = _rows(run_stage("generate", _config(tiny_config, model, prompts, {"format": "jsonl", "results": str(data)})))
    assert [(r["prompt_idx"], r["reference"], r["response"]) for r in rows] == [(0, "3", "3"), (0, "3", "4"), (0, "3", "5")]
