"""A judge you can debug: its raw answers kept beside the rewards (any Parquet tool reads them),
parse rate and position bias in the dataset card, and `score --sample` before a long run."""

import http.server
import json
import threading

import pyarrow.parquet as pq
from cli_runner import cli
from stage_runner import run_stage

from grao_pipe.config import load_config
from grao_pipe.datasets import card, find
from grao_pipe.storage import Workdir


class _FirstAlwaysWins(http.server.BaseHTTPRequestHandler):
    """A judge with total position bias: Text 1 always wins."""

    def do_POST(self):
        self.rfile.read(int(self.headers["content-length"]))
        body = {"id": "x", "object": "chat.completion", "created": 0, "model": "biased",
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": "Verdict: 1 > 2"}}]}
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def _judge(base_url: str, model: str) -> dict:
    return {"kind": "judge", "name": "j", "backend": "openai", "base_url": base_url, "model": model,
            "both_orders": True, "max_tokens": 8, "concurrency": 2}


def test_position_bias_and_parse_rate_from_kept_verdicts(tiny_config):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FirstAlwaysWins)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        cfg = load_config(tiny_config(data={"limit": 3}, score={
            "scorers": [_judge(f"http://127.0.0.1:{server.server_port}/v1", "biased")], "max_degenerate_share": 1.0}))
        run_stage("generate", cfg)
        out = run_stage("score", cfg)
    finally:
        server.shutdown()
    # Other advantage settings re-use the cached raw rewards (the judge is gone now) and keep its answers.
    other = load_config(tiny_config(data={"limit": 3}, score={
        "scorers": [_judge(f"http://127.0.0.1:{server.server_port}/v1", "biased")], "max_degenerate_share": 1.0,
        "advantage": {"mode": "samples_only"}}))
    again = run_stage("score", other)
    assert again.target.key != out.target.key
    cached = pq.read_table(again.target.dir.member(again.manifest.shards[0].name))
    assert set(cached["judge_j_answer_swapped"].to_pylist()) == {"Verdict: 1 > 2"}
    d, m = find(Workdir(cfg.workdir), out.target.key[:8])
    shard = pq.read_table(d.member(m.shards[0].name))  # a plain Parquet read
    assert set(shard["judge_j_answer"].to_pylist()) == {"Verdict: 1 > 2"}
    assert set(shard["judge_j_verdict"].to_pylist()) == {1} and set(shard["judge_j_verdict_swapped"].to_pylist()) == {1}
    assert set(shard["reward"].to_pylist()) == {0.0}  # both orders cancel a pure position bias
    fig = card(d, m)["judges"]["j"]
    assert fig["answers"] == 2 * m.rows and fig["parse_rate"] == 1.0
    assert fig["first_wins"] == 1.0 and fig["orders_agree"] == 0.0


def test_real_judge_server_answers_are_kept_and_sampled(openai_server, tiny_config, tmp_path):
    base_url, model = openai_server
    path = tiny_config(data={"limit": 2}, generate={"num_samples": 2},
                       score={"scorers": [_judge(base_url, model)], "max_invalid_share": 1.0,
                              "max_degenerate_share": 1.0})
    assert cli("generate", "-c", str(path)).returncode == 0
    sample = cli("score", "-c", str(path), "--sample", "2")
    assert sample.returncode == 0, sample.stderr
    assert sample.stdout.count("----- prompt (the sample as Text 1):") == 2
    assert sample.stdout.count("----- answer: ") == 4 and "answers parsed" in sample.stdout
    assert not (tmp_path / "work" / "score").exists()  # a dry run writes nothing

    cfg = load_config(path)
    out = run_stage("score", cfg)
    shard = pq.read_table(out.target.dir.member(out.manifest.shards[0].name))
    answers = shard["judge_j_answer"].to_pylist() + shard["judge_j_answer_swapped"].to_pylist()
    assert len(answers) == 2 * shard.num_rows and all(isinstance(a, str) for a in answers)
    verdicts = shard["judge_j_verdict"].to_pylist()
    invalid = sum(r is None for r in shard["reward"].to_pylist())
    assert invalid >= sum(v is None for v in verdicts)  # an unparseable answer invalidates its row
    shown = cli("datasets", "show", "-c", str(path), out.target.key[:8])
    fig = json.loads(shown.stdout)["judges"]["j"]
    assert fig["answers"] == 2 * shard.num_rows and 0.0 <= fig["parse_rate"] <= 1.0
