"""Evaluation client for OpenAI-compatible completions endpoints.

Speaks only the OpenAI legacy completions wire format, so the same code talks to the local
server (sftlab.serving.server) and to a cluster KServe InferenceService (HF runtime / vLLM).

Prompts longer than the model's context window are handled per prompt, never by failing the
whole call. Servers refuse a request whose prompt plus ``max_tokens`` does not fit (vLLM and the
local server answer 400, older KServe 500, all with "maximum context length is N tokens"); the
client then sends that request's prompts one at a time and, for each prompt refused alone:

- generation: when the prompt itself fits, generation is clamped to the tokens left
  (``fit == "clamped"``; the prompt's length comes from the server's ``usage``, the window from
  ``max_model_len`` in ``/models`` or else from the refusal); when it does not, the completion is
  empty with ``fit == "too_long"``;
- log-likelihood (echo): context and continuation are scored together or not at all
  (``fit == "too_long"``).

The text is never truncated: that would change the question, and without the model's tokenizer
the client cannot cut on a token boundary. Results are ``str`` and ``tuple`` as before, carrying
``fit`` and ``note`` (why, in the server's words) for callers that look.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, Literal

import httpx
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from sftlab.errors import SftlabError

Progress = Callable[[int, int], None]
Fit = Literal["ok", "clamped", "too_long"]

_TRANSIENT_STATUS = {429, 500, 502, 503, 504}
# vLLM (every version), OpenAI and the local server all word a context overflow this way.
_CONTEXT_RE = re.compile(r"maximum context length is (\d+)", re.IGNORECASE)


class Completion(str):
    """A completion's text; ``fit`` says whether its prompt fitted the context window ("ok"),
    generation was cut to the room left ("clamped"), or the prompt did not fit ("too_long", empty
    text); ``note`` says why when not "ok"."""

    fit: Fit
    note: str

    def __new__(cls, text: str = "", fit: Fit = "ok", note: str = "") -> Completion:
        self = super().__new__(cls, text)
        self.fit, self.note = fit, note
        return self


class LogLikelihood(tuple[float, int]):
    """(sum of the continuation's log-probabilities, its token count); ``fit`` "too_long" (with
    ``note``) when context + continuation do not fit the context window: then (-inf, 0)."""

    fit: Fit
    note: str

    def __new__(cls, logprob: float, n_tokens: int, fit: Fit = "ok", note: str = "") -> LogLikelihood:
        self = super().__new__(cls, (logprob, n_tokens))
        self.fit, self.note = fit, note
        return self


class ContextLengthExceeded(SftlabError):
    """The server refused a request because it does not fit the model's context window.
    ``limit``: the window in tokens, when the message says it."""

    def __init__(self, message: str, limit: int | None):
        super().__init__(message)
        self.limit = limit


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
        self._http = httpx.Client(
            timeout=timeout, limits=httpx.Limits(max_connections=max_connections), headers=headers
        )

    def close(self) -> None:
        self._http.close()

    def post(self, route: str, payload: dict[str, Any]) -> dict[str, Any]:
        """POST ``payload`` to ``base_url + route``; transient failures are retried, others fail at once."""
        url = self.base_url + route
        # Waits of backoff, 2 x backoff, 4 x backoff, ... between the 1 + ``retries`` attempts.
        retrying = Retrying(
            stop=stop_after_attempt(self.retries + 1),
            wait=wait_exponential(multiplier=self.backoff),
            retry=retry_if_exception_type(_Transient),
            reraise=True,
        )
        try:
            return retrying(self._post_once, url, payload)
        except _Transient as exc:
            attempts = retrying.statistics["attempt_number"]
            raise SftlabError(f"{url}: {exc} (gave up after {attempts} attempts)") from None

    def get(self, route: str) -> dict[str, Any] | None:
        """GET ``base_url + route`` once; None on any failure (for optional information)."""
        try:
            response = self._http.get(self.base_url + route)
            return response.json() if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            return None

    def _post_once(self, url: str, payload: dict[str, Any]) -> dict[str, Any]:
        try:
            response = self._http.post(url, json=payload)
        except httpx.TransportError as exc:
            raise _Transient(f"{type(exc).__name__}: {exc}") from None
        if response.status_code != 200:
            message = _error_message(response)
            limit = _CONTEXT_RE.search(message)
            # Not retried even as a 500 (KServe before 0.14 answered context overflows with 500).
            if limit is not None or "context_length_exceeded" in response.text:
                raise ContextLengthExceeded(message, int(limit.group(1)) if limit else None)
            if response.status_code in _TRANSIENT_STATUS:
                raise _Transient(f"HTTP {response.status_code}: {message}")
            raise SftlabError(f"{url}: HTTP {response.status_code}: {message}")
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
        on_progress: Progress | None = None,
    ):
        self.model = model
        self.on_progress = on_progress  # for calls that pass none (tasks do not know who watches)
        self.concurrency = concurrency
        self.batch_size = batch_size
        self._api = OpenAIHttp(base_url, timeout=timeout, retries=retries, backoff=backoff, max_connections=concurrency)
        self._context_length: int | None = None
        self._context_length_read = False

    def close(self) -> None:
        self._api.close()

    def __enter__(self) -> CompletionsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def context_length(self) -> int | None:
        """The model's context window in tokens, as ``/models`` reports it (vLLM's and the local
        server's ``max_model_len``; KServe's own route has none); read once, None when unknown."""
        if not self._context_length_read:
            body = self._api.get("/models") or {}
            cards = [c for c in body.get("data") or [] if isinstance(c, dict) and c.get("id") == self.model]
            limit = cards[0].get("max_model_len") if cards else None
            self._context_length = limit if isinstance(limit, int) and limit > 0 else None
            self._context_length_read = True
        return self._context_length

    def complete(
        self,
        prompts: list[str],
        *,
        max_tokens: int,
        stop: Sequence[str] | None = None,
        temperature: float = 0.0,
        seed: int | None = None,
        on_progress: Progress | None = None,
    ) -> list[Completion]:
        """The completion text of each prompt (without the prompt); ``seed`` makes sampling repeatable.
        A prompt that leaves less than ``max_tokens`` of the context window is clamped or comes back
        empty and "too_long" (see the module docstring)."""
        params: dict[str, Any] = {"max_tokens": max_tokens, "temperature": temperature}
        if seed is not None:
            params["seed"] = seed
        if stop:
            params["stop"] = list(stop)
        return [
            Completion("", r.fit, r.note) if r.choice is None else Completion(r.choice["text"], r.fit, r.note)
            for r in self._choices(prompts, params, on_progress)
        ]

    def loglikelihood(
        self, pairs: list[tuple[str, str]], *, on_progress: Progress | None = None
    ) -> list[LogLikelihood]:
        """(sum of log P(continuation tokens | context), number of those tokens) per pair.

        Echoes context+continuation with prompt logprobs and keeps the tokens whose text offset
        falls inside the continuation. ``max_tokens`` is 1, not 0: vLLM rejects 0 and llama.cpp
        reads it as unlimited; the one generated token lies past the continuation and is ignored.
        Trailing whitespace moves from context to continuation (as lm-evaluation-harness does),
        because tokenizers attach a space to the token after it. A pair that does not fit the
        context window (with that one token) scores (-inf, 0) with ``fit`` "too_long".
        """
        pairs = [_move_trailing_space(context, continuation) for context, continuation in pairs]
        params = {"max_tokens": 1, "temperature": 0.0, "echo": True, "logprobs": 1}
        results = self._choices([c + x for c, x in pairs], params, on_progress)
        return [
            LogLikelihood(float("-inf"), 0, r.fit, r.note)
            if r.choice is None
            else LogLikelihood(*_continuation_score(r.choice, len(c), len(c) + len(x)))
            for r, (c, x) in zip(results, pairs, strict=True)
        ]

    def _choices(self, prompts: list[str], params: dict[str, Any], on_progress: Progress | None) -> list[_Result]:
        """One result per prompt, in order, from concurrent batched requests."""
        batches = [prompts[i : i + self.batch_size] for i in range(0, len(prompts), self.batch_size)]
        results: list[list[_Result]] = [[] for _ in batches]
        done = 0
        on_progress = on_progress or self.on_progress
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            futures: dict[Future[list[_Result]], int] = {
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

    def _complete_batch(self, prompts: list[str], params: dict[str, Any]) -> list[_Result]:
        if len(prompts) > 1:
            with suppress(ContextLengthExceeded):  # one prompt refuses the whole request: find which
                return [_Result(choice) for choice in self._post(prompts, params)]
        return [self._complete_alone(prompt, params) for prompt in prompts]

    def _complete_alone(self, prompt: str, params: dict[str, Any]) -> _Result:
        try:
            return _Result(self._post([prompt], params)[0])
        except ContextLengthExceeded as refused:
            return self._fit(prompt, params, refused)

    def _fit(self, prompt: str, params: dict[str, Any], refused: ContextLengthExceeded) -> _Result:
        """The result of a prompt the server refused alone: generation clamped to the room the
        prompt leaves, or nothing ("too_long") when it leaves none or the request echoes."""
        too_long = _Result(None, "too_long", str(refused))
        wanted = params["max_tokens"]
        limit = self.context_length or refused.limit
        if params.get("echo") or wanted <= 1 or limit is None:
            return too_long
        prompt_tokens = self._prompt_tokens(prompt)
        if prompt_tokens is None or prompt_tokens >= limit:
            return too_long
        room = limit - prompt_tokens
        try:
            choice = self._post([prompt], {**params, "max_tokens": room})[0]
        except ContextLengthExceeded:
            return too_long
        note = (
            f"generation clamped to {room} of {wanted} tokens: the prompt has {prompt_tokens} tokens "
            f"and the model's maximum context length is {limit}"
        )
        return _Result(choice, "clamped", note)

    def _prompt_tokens(self, prompt: str) -> int | None:
        """The prompt's length in the server's tokens (from ``usage`` of a one-token request);
        None when even that does not fit or the server reports no usage."""
        try:
            body = self._api.post(
                "/completions", {"model": self.model, "prompt": prompt, "max_tokens": 1, "temperature": 0.0}
            )
        except ContextLengthExceeded:
            return None
        count = (body.get("usage") or {}).get("prompt_tokens")
        return count if isinstance(count, int) else None

    def _post(self, prompts: list[str], params: dict[str, Any]) -> list[dict[str, Any]]:
        body = self._api.post("/completions", {**params, "model": self.model, "prompt": prompts})
        choices = sorted(body.get("choices") or [], key=lambda c: c.get("index", 0))
        if len(choices) != len(prompts):
            raise SftlabError(f"{self._api.base_url}/completions: expected {len(prompts)} choices, got {len(choices)}")
        return choices


@dataclass(frozen=True)
class _Result:
    """One prompt's choice (None: the prompt does not fit) and how it fitted the context window."""

    choice: dict[str, Any] | None
    fit: Fit = "ok"
    note: str = ""


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
    if choice.get("logprobs") is None:
        raise SftlabError(
            "the server answered logprobs: null, so it cannot score log-likelihoods (KServe's Hugging Face "
            "runtime on its Transformers backend does this): use evaluation.kserve.runtime sftlab or vllm"
        )
    logprobs = choice["logprobs"]
    picked = [
        lp
        for offset, lp in zip(logprobs.get("text_offset", []), logprobs.get("token_logprobs", []), strict=True)
        if start <= offset < end
    ]
    if not picked:
        raise SftlabError(
            f"no continuation tokens in the echoed logprobs (characters {start}-{end}); does the server support echo?"
        )
    if any(lp is None for lp in picked):
        raise SftlabError("the continuation starts the prompt, so its first token has no logprob: give a context")
    return float(sum(picked)), len(picked)
