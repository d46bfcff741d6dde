"""OpenAI-compatible endpoints (vLLM/SGLang servers, ``transformers serve``, hosted APIs) through
the ``openai`` SDK: its retries (408/409/429/5xx and connection errors, exponential backoff,
``Retry-After``), timeouts and typed errors, plus bounded concurrency, and one error per failure
that says which server and what to do (exit code 7, which schedulers retry)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from grao_pipe.errors import ConfigError, RemoteUnavailable

T = TypeVar("T")
U = TypeVar("U")


class EndpointError(RemoteUnavailable):
    """The server stayed down (5xx, 408/409/429, timeouts, no connection: retried first), or
    answered something that is not a completion (exit 7: a scheduler retries later)."""


class EndpointRejected(ConfigError):
    """The server refused the request (HTTP 4xx other than 408/409/429): a wrong model name, a
    setting the server does not accept, a missing key. Not retried; exit 2 with the server's
    message and the models it serves."""


# The SDK retries these (and 5xx); every other 4xx is the request's fault, retrying cannot help.
RETRYABLE_4XX = frozenset({408, 409, 429})


class OpenAIEndpoint:
    def __init__(self, base_url: str, api_key: str | None = None, *, timeout_s: float = 60.0,
                 max_retries: int = 4, concurrency: int = 8):
        import openai

        self.base_url = base_url.rstrip("/")
        self.max_retries = max_retries
        self.concurrency = concurrency
        # Servers without authentication ignore the key; the SDK insists on one.
        self._client = openai.OpenAI(base_url=self.base_url, api_key=api_key or "EMPTY", timeout=timeout_s,
                                     max_retries=max_retries)
        self._openai = openai

    def close(self) -> None:
        self._client.close()

    def _call(self, fn: Callable[..., T], body: dict[str, Any]) -> T:
        oa = self._openai
        attempts = f"after {self.max_retries + 1} attempts"
        try:
            return fn(**body)
        except oa.APIStatusError as e:
            if 400 <= e.status_code < 500 and e.status_code not in RETRYABLE_4XX:
                raise EndpointRejected(f"{self.base_url} refused the request for model {body.get('model')!r}: HTTP "
                                       f"{e.status_code}: {_server_message(e)}; {self.served_models_hint()}") from None
            raise EndpointError(f"{self.base_url} answered HTTP {e.status_code} ({attempts}): "
                                f"{_server_message(e)}; check that the server is healthy, then re-run "
                                "(finished shards are kept)") from None
        except (oa.APIConnectionError, oa.APITimeoutError) as e:
            raise EndpointError(f"{self.base_url}: no answer {attempts} ({type(e).__name__}: {e}); check that the "
                                "server is up and reachable, then re-run (finished shards are kept)") from None
        except (oa.APIResponseValidationError, ValueError) as e:
            raise EndpointError(f"{self.base_url} answered something that is not an OpenAI-compatible "
                                f"completion ({type(e).__name__}: {str(e)[:120]}); check the base URL") from None

    def served_models(self) -> list[str] | None:
        """The model names the server serves (``GET /v1/models``), or None if it does not say."""
        try:
            return [m.id for m in self._client.with_options(max_retries=0, timeout=10).models.list()]
        except Exception:  # an old server without /v1/models, or down by now: the hint is optional
            return None

    def served_models_hint(self) -> str:
        names = self.served_models()
        if not names:
            return "check the model name and the request settings (the server lists no models at /v1/models)"
        shown = ", ".join(repr(n) for n in names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
        return f"it serves {shown}; set the scorer's or generate's model to one of them (see docs/operations.md)"

    def chat(self, body: dict[str, Any]) -> Any:
        """One ``/chat/completions`` request; returns the SDK's ``ChatCompletion``."""
        return self._call(self._client.chat.completions.create, body)

    def complete(self, body: dict[str, Any]) -> Any:
        """One legacy ``/completions`` request (plain-text prompts); returns a ``Completion``."""
        return self._call(self._client.completions.create, body)

    def map(self, fn: Callable[[U], T], items: Sequence[U]) -> list[T]:
        """``fn`` over ``items`` in order, at most ``concurrency`` in flight; the first failure is raised."""
        with ThreadPoolExecutor(self.concurrency) as pool:
            return list(pool.map(fn, items))


def message_text(completion: Any) -> str:
    """The first choice's message text ('' when the server sent none)."""
    choices = getattr(completion, "choices", None) or []
    content = choices[0].message.content if choices and choices[0].message is not None else None
    return content if isinstance(content, str) else ""


def _server_message(e: Any) -> str:
    """What the server said about a refused request: its JSON error message, else its body."""
    body = getattr(e, "body", None)
    if isinstance(body, dict):
        err = body.get("error", body)
        msg = (err.get("message") or err.get("detail")) if isinstance(err, dict) else err
        if msg:
            return str(msg)[:500]
    response = getattr(e, "response", None)
    text = getattr(response, "text", None) if response is not None else None
    return (text or str(getattr(e, "message", e)))[:500]
