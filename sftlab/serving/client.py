"""Evaluation client for OpenAI-compatible completions endpoints.

Speaks only the OpenAI legacy completions wire format, so the same code talks to the local
server (sftlab.serving.server) and to a cluster KServe InferenceService (HF runtime / vLLM).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from typing import Any

import httpx

from sftlab.errors import SftlabError

Progress = Callable[[int, int], None]

_TRANSIENT_STATUS = {429, 500, 502, 503, 504}


class _Transient(Exception):
    """A failure worth retrying (connection trouble, overload, server error)."""


class OpenAIHttp:
    """POSTs to an OpenAI-compatible API, with exponential backoff on transient failures.

    An API key, when given, goes only into the ``Authorization`` header: never into errors or logs.
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 120.0,
        retries: int = 3,
        backoff: float = 0.5,
        max_connections: int = 4,
        api_key: str | None = None,
    ):
        self.base_url = base_url.rstrip("/")
        self.retries = retries
        self.backoff = backoff
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(timeout=timeout, limits=httpx.Limits(max_connections=max_connections), headers=headers)

    def close(self) -> None:
        self._http.close()

    def post(self, route: str, payload: dict[str, Any]) -> dict[str, Any]:
        """POST ``payload`` to ``base_url + route``; transient failures are retried, others fail at once."""
        url = self.base_url + route
        attempt = 0
        while True:
            try:
                return self._post_once(url, payload)
            except _Transient as exc:
                if attempt == self.retries:
                    raise SftlabError(f"{url}: {exc} (gave up after {attempt + 1} attempts)") from None
            time.sleep(self.backoff * 2**attempt)
            attempt += 1

    def _post_once(self, url: str, payload: dict[str, Any]) -> dict[str, Any]:
        try:
            response = self._http.post(url, json=payload)
        except httpx.TransportError as exc:
            raise _Transient(f"{type(exc).__name__}: {exc}") from None
        if response.status_code in _TRANSIENT_STATUS:
            raise _Transient(f"HTTP {response.status_code}: {_error_message(response)}")
        if response.status_code != 200:
            raise SftlabError(f"{url}: HTTP {response.status_code}: {_error_message(response)}")
        try:
            return response.json()
        except ValueError:
            raise SftlabError(f"{url}: response is not JSON: {response.text[:200]!r}") from None


class CompletionsClient:
    """Bounded-concurrency, retrying client for ``{base_url}/completions``.

    Prompts go out in batches of ``batch_size`` per request (OpenAI ``prompt`` lists), with up to
    ``concurrency`` requests in flight: a batching server (vLLM, or the local server) then fills
    its batches, and results come back in input order.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        concurrency: int = 4,
        timeout: float = 120.0,
        retries: int = 3,
        batch_size: int = 8,
        backoff: float = 0.5,
    ):
        self.model = model
        self.concurrency = concurrency
        self.batch_size = batch_size
        self._api = OpenAIHttp(base_url, timeout=timeout, retries=retries, backoff=backoff, max_connections=concurrency)

    def close(self) -> None:
        self._api.close()

    def __enter__(self) -> CompletionsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def complete(
        self,
        prompts: list[str],
        *,
        max_tokens: int,
        stop: Sequence[str] | None = None,
        temperature: float = 0.0,
        seed: int | None = None,
        on_progress: Progress | None = None,
    ) -> list[str]:
        """The completion text of each prompt (without the prompt); ``seed`` makes sampling repeatable."""
        params: dict[str, Any] = {"max_tokens": max_tokens, "temperature": temperature}
        if seed is not None:
            params["seed"] = seed
        if stop:
            params["stop"] = list(stop)
        return [c["text"] for c in self._choices(prompts, params, on_progress)]

    def loglikelihood(
        self, pairs: list[tuple[str, str]], *, on_progress: Progress | None = None
    ) -> list[tuple[float, int]]:
        """(sum of log P(continuation tokens | context), number of those tokens) per pair.

        Echoes context+continuation with prompt logprobs and keeps the tokens whose text offset
        falls inside the continuation. ``max_tokens`` is 1, not 0: vLLM rejects 0 and llama.cpp
        reads it as unlimited; the one generated token lies past the continuation and is ignored.
        Trailing whitespace moves from context to continuation (as lm-evaluation-harness does),
        because tokenizers attach a space to the token after it.
        """
        pairs = [_move_trailing_space(context, continuation) for context, continuation in pairs]
        params = {"max_tokens": 1, "temperature": 0.0, "echo": True, "logprobs": 1}
        choices = self._choices([c + x for c, x in pairs], params, on_progress)
        return [_continuation_score(ch, len(c), len(c) + len(x)) for ch, (c, x) in zip(choices, pairs)]

    def _choices(
        self, prompts: list[str], params: dict[str, Any], on_progress: Progress | None
    ) -> list[dict[str, Any]]:
        """One choice per prompt, in order, from concurrent batched requests."""
        batches = [prompts[i : i + self.batch_size] for i in range(0, len(prompts), self.batch_size)]
        results: list[list[dict[str, Any]]] = [[] for _ in batches]
        done = 0
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            futures: dict[Future[list[dict[str, Any]]], int] = {
                pool.submit(self._complete_batch, batch, params): i for i, batch in enumerate(batches)
            }
            try:
                for future in as_completed(futures):
                    i = futures[future]
                    results[i] = future.result()
                    done += len(batches[i])
                    if on_progress is not None:
                        on_progress(done, len(prompts))
            except BaseException:
                pool.shutdown(cancel_futures=True)
                raise
        return [choice for batch in results for choice in batch]

    def _complete_batch(self, prompts: list[str], params: dict[str, Any]) -> list[dict[str, Any]]:
        body = self._api.post("/completions", {**params, "model": self.model, "prompt": prompts})
        choices = sorted(body.get("choices") or [], key=lambda c: c.get("index", 0))
        if len(choices) != len(prompts):
            raise SftlabError(f"{self._api.base_url}/completions: expected {len(prompts)} choices, got {len(choices)}")
        return choices


def _error_message(response: httpx.Response) -> str:
    """The message of an OpenAI-style ({"error": {"message"}}) or kserve-style error body, on one line."""
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):
        error = None
    message = error.get("message") if isinstance(error, dict) else error
    return " ".join(str(message or response.text[:200] or response.reason_phrase).split())


def _move_trailing_space(context: str, continuation: str) -> tuple[str, str]:
    stripped = context.rstrip()
    return stripped, context[len(stripped) :] + continuation


def _continuation_score(choice: dict[str, Any], start: int, end: int) -> tuple[float, int]:
    """Sum the logprobs of the echoed tokens whose text starts in [start, end)."""
    logprobs = choice.get("logprobs") or {}
    picked = [
        lp
        for offset, lp in zip(logprobs.get("text_offset", []), logprobs.get("token_logprobs", []))
        if start <= offset < end
    ]
    if not picked:
        raise SftlabError(
            f"no continuation tokens in the echoed logprobs (characters {start}-{end}); does the server support echo?"
        )
    if any(lp is None for lp in picked):
        raise SftlabError("the continuation starts the prompt, so its first token has no logprob: give a context")
    return float(sum(picked)), len(picked)
