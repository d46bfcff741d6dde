"""A small client for OpenAI-compatible chat endpoints (vLLM/SGLang servers, hosted APIs):
bounded concurrency, retries with backoff on 429/5xx/transport errors/garbage, timeouts."""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from grao_pipe.errors import RemoteUnavailable


class EndpointError(RemoteUnavailable):
    """The server stayed down or kept answering garbage after all retries."""


RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


class OpenAIClient:
    def __init__(self, base_url: str, api_key: str | None = None, *, timeout_s: float = 60.0,
                 max_retries: int = 4, concurrency: int = 8, backoff_s: float = 0.5):
        import httpx

        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout_s,
                                  limits=httpx.Limits(max_connections=concurrency))
        self._httpx = httpx
        self.max_retries = max_retries
        self.concurrency = concurrency
        self.backoff_s = backoff_s

    def close(self) -> None:
        self._http.close()

    def chat(self, body: dict[str, Any], path: str = "/chat/completions") -> dict[str, Any]:
        """POST ``path`` (chat or legacy completions) with retries; returns the parsed JSON."""
        last = "no attempt"
        for attempt in range(self.max_retries + 1):
            wait = self.backoff_s * (2**attempt)
            try:
                r = self._http.post(path, json=body)
                if r.status_code in RETRY_STATUS:
                    last = f"HTTP {r.status_code}"
                    wait = max(wait, float(r.headers.get("retry-after", 0) or 0))
                elif r.status_code >= 400:
                    raise EndpointError(f"{self.base_url}{path} answered HTTP {r.status_code}: {r.text[:200]}")
                else:
                    data = r.json()
                    if isinstance(data, dict) and isinstance(data.get("choices"), list) and data["choices"]:
                        return data
                    last = f"a response without choices: {str(data)[:120]}"
            except (self._httpx.TransportError, self._httpx.TimeoutException) as e:
                last = f"{type(e).__name__}: {e}"
            except ValueError:  # not JSON
                last = "a response that is not JSON"
            if attempt < self.max_retries:
                time.sleep(min(wait, 30.0))
        raise EndpointError(
            f"{self.base_url}: no valid answer after {self.max_retries + 1} attempts (last: {last}); "
            "check that the server is up and OpenAI-compatible"
        )

    def chat_many(self, bodies: Sequence[dict[str, Any]], path: str = "/chat/completions") -> list[dict[str, Any]]:
        """Requests in order, at most ``concurrency`` in flight; the first failure is raised."""
        with ThreadPoolExecutor(self.concurrency) as pool:
            return list(pool.map(lambda b: self.chat(b, path), bodies))


def message_text(response: dict[str, Any]) -> str:
    content = response["choices"][0].get("message", {}).get("content")
    return content if isinstance(content, str) else ""
