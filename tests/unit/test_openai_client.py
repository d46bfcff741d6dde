"""The OpenAI-compatible client fails with one clear error (exit 7) when nothing answers."""

import pytest

from grao_pipe.errors import RemoteUnavailable
from grao_pipe.openai_client import EndpointError, OpenAIEndpoint


def test_an_unreachable_server_is_one_clear_error():
    client = OpenAIEndpoint("http://127.0.0.1:9/v1", max_retries=0, timeout_s=2)
    with pytest.raises(EndpointError, match=r"127.0.0.1:9/v1: no answer after 1 attempts \(APIConnectionError") as e:
        client.chat({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    assert isinstance(e.value, RemoteUnavailable) and e.value.exit_code == 7
