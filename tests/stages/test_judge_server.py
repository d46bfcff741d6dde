"""The comparative judge and the OpenAI client against a real OpenAI-compatible server."""

import http.server
import threading

import pytest

from grao_pipe.config import JudgeScorer
from grao_pipe.openai_client import EndpointError, OpenAIEndpoint, message_text
from grao_pipe.scoring import ScorerFiles
from grao_pipe.scoring.base import ScoreInput
from grao_pipe.scoring.judge import Judge


def test_judge_over_http_counts_unparseable_answers(openai_server):
    base_url, model = openai_server
    judge = Judge(JudgeScorer(model=model, base_url=base_url, max_tokens=4, both_orders=True, concurrency=2), ScorerFiles())
    res = judge.score(ScoreInput.from_lists(["1+2=", "2+2="], ["3", "5"], ["3", "4"]))
    # A random tiny model does not answer "1 > 2": each row must be invalid and counted, not 0.
    for v in res.tolist():
        assert v is None or v in (-1.0, -0.5, 0.0, 0.5, 1.0)
    invalid = sum(v is None for v in res.tolist())
    assert invalid <= res.unparseable <= 2 * invalid  # each invalid row had 1 or 2 bad answers


def test_client_returns_server_text(openai_server):
    base_url, model = openai_server
    client = OpenAIEndpoint(base_url, concurrency=2)
    out = client.map(client.chat, [{"model": model, "messages": [{"role": "user", "content": "1+1="}],
                                    "max_tokens": 3, "seed": 1, "temperature": 0.0}] * 2)
    assert len(out) == 2 and all(isinstance(message_text(r), str) for r in out)
    assert message_text(out[0]) == message_text(out[1])  # greedy: same prompt, same text


def test_server_down_is_a_clear_error_after_retries():
    client = OpenAIEndpoint("http://127.0.0.1:9/v1", max_retries=2, timeout_s=2)
    with pytest.raises(EndpointError, match=r"no answer after 3 attempts \(APIConnectionError"):
        client.chat({"model": "m", "messages": []})


class _Garbage(http.server.BaseHTTPRequestHandler):
    calls = 0

    def do_POST(self):
        type(self).calls += 1
        if type(self).calls == 1:
            self.send_response(503)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.end_headers()
        self.wfile.write(b"<html>not json</html>")

    def log_message(self, *args):
        pass


def test_unavailable_is_retried_and_garbage_is_reported():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Garbage)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = OpenAIEndpoint(f"http://127.0.0.1:{server.server_port}/v1", max_retries=2)
        with pytest.raises(EndpointError, match="not an OpenAI-compatible completion"):
            client.chat({"model": "m", "messages": []})
        assert _Garbage.calls == 2  # the 503 is retried by the SDK; a garbage 200 is an error at once
    finally:
        server.shutdown()
