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


class _Refusing(http.server.BaseHTTPRequestHandler):
    """Refuses every completion with HTTP 400 and the server's reason; lists its models."""

    posts = 0

    def _json(self, code: int, body: bytes) -> None:
        self.send_response(code)
        self.send_header("content-type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        type(self).posts += 1
        self._json(400, b'{"error": {"message": "The model `gpt-judge` does not exist.", "type": "NotFoundError"}}')

    def do_GET(self):
        self._json(200, b'{"object": "list", "data": [{"id": "Qwen/Qwen2.5-7B-Instruct", "object": "model"}]}')

    def log_message(self, *args):
        pass


def test_a_refused_request_is_a_config_error_with_the_served_models():
    """HTTP 4xx: not retried, exit 2 (ConfigError), the server's own message and /v1/models."""
    from grao_pipe.errors import ConfigError
    from grao_pipe.openai_client import EndpointRejected

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Refusing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_port}/v1"
        judge = Judge(JudgeScorer(model="gpt-judge", base_url=base, max_retries=3, concurrency=1), ScorerFiles())
        with pytest.raises(EndpointRejected) as e:
            judge.score(ScoreInput.from_lists(["1+2="], ["3"], ["3"]))
        assert isinstance(e.value, ConfigError) and e.value.exit_code == 2
        msg = str(e.value)
        assert "HTTP 400" in msg and "The model `gpt-judge` does not exist." in msg
        assert "'Qwen/Qwen2.5-7B-Instruct'" in msg
        assert _Refusing.posts == 1  # a 4xx is not retried
    finally:
        server.shutdown()


def test_transformers_serve_unknown_model_is_a_config_error(openai_server):
    """The trial's case: a judge model name the server does not serve -> exit 2, not 7."""
    from grao_pipe.openai_client import EndpointRejected

    base_url, model = openai_server
    judge = Judge(JudgeScorer(model="no-such/judge-model", base_url=base_url, max_tokens=4, max_retries=1), ScorerFiles())
    with pytest.raises(EndpointRejected, match=r"refused the request for model 'no-such/judge-model': HTTP 4\d\d") as e:
        judge.score(ScoreInput.from_lists(["1+2="], ["3"], ["3"]))
    assert f"it serves {model!r}" in str(e.value)  # transformers serve names a model by its directory
