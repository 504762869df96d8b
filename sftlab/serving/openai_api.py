"""The OpenAI completions/chat wire format, served from a ``CausalLM`` on a FastAPI app.

The cluster's KServe Hugging Face runtime (vLLM) serves these routes; kserve's own OpenAI classes
need vllm (CUDA-only), so sftlab implements them here and one client talks to both.

Context window, as vLLM and OpenAI: a request whose prompt plus ``max_tokens`` does not fit the
model's context (``max_model_len`` in ``/models``) is refused whole with HTTP 400, an
``invalid_request_error`` with code ``context_length_exceeded`` and vLLM's message ("This model's
maximum context length is N tokens. However, you requested M tokens (P in the prompt, G in the
completion)..."). Nothing is truncated or clamped here: the client
(``sftlab.serving.client``) decides per prompt, so it behaves the same against vLLM.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sftlab.serving.model import CausalLM, Encoded, Generation, Sampling

NonEmptyStr = Annotated[str, Field(min_length=1)]


class _Request(BaseModel):
    # Extra fields are ignored, as OpenAI-compatible servers do (clients send e.g. "user").
    model_config = ConfigDict(extra="ignore")

    model: str
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: NonEmptyStr | list[NonEmptyStr] | None = None
    n: Literal[1] = 1
    seed: int | None = None
    stream: Literal[False] = False

    def sampling(self, max_tokens: int) -> Sampling:
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        return Sampling(max_tokens, self.temperature, self.top_p, stop, self.seed)


class CompletionRequest(_Request):
    prompt: str | Annotated[list[str], Field(min_length=1)]
    max_tokens: int = Field(16, ge=0)
    logprobs: int | None = Field(None, ge=0, le=20)
    echo: bool = False


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant"]
    content: str


class ChatRequest(_Request):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_tokens: int | None = Field(None, ge=0)


class OpenAIError(Exception):
    """A request the server refuses; rendered as an OpenAI-style error body."""

    def __init__(self, message: str, status: int = 400, code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.status, self.code, self.param = status, code, param


async def _openai_error_handler(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, OpenAIError)
    body = {"message": str(exc), "type": "invalid_request_error", "param": exc.param, "code": exc.code}
    return JSONResponse(status_code=exc.status, content={"error": body})


def context_length_exceeded(limit: int, prompt_tokens: int, max_tokens: int | None, param: str) -> OpenAIError:
    """vLLM's refusal, word for word but for ``param`` ("prompt" or "messages"); ``max_tokens``
    None: the request left it out, so the prompt alone must leave room for one token."""
    if max_tokens is None:
        requested = f"{prompt_tokens} tokens in the {param}. Please reduce the length of the {param}."
    else:
        requested = (
            f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the {param}, {max_tokens} in the completion). "
            f"Please reduce the length of the {param} or completion."
        )
    message = f"This model's maximum context length is {limit} tokens. However, you requested {requested}"
    return OpenAIError(message, code="context_length_exceeded", param=param)


async def _parse(request: Request, schema: type[BaseModel]) -> Any:
    try:
        body = await request.json()
    except ValueError:
        raise OpenAIError("request body is not valid JSON") from None
    try:
        return schema.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise OpenAIError(f"{where}: {first['msg']}" if where else first["msg"]) from None


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


class OpenAIRoutes:
    """``/openai/v1/completions``, ``/chat/completions`` and ``/models`` for one model."""

    def __init__(self, model: CausalLM):
        self.model = model
        self.created = int(time.time())

    def register(self, app: FastAPI) -> None:
        app.add_api_route("/openai/v1/completions", self.completions, methods=["POST"])
        app.add_api_route("/openai/v1/chat/completions", self.chat_completions, methods=["POST"])
        app.add_api_route("/openai/v1/models", self.models, methods=["GET"])
        app.add_exception_handler(OpenAIError, _openai_error_handler)

    async def completions(self, request: Request) -> dict[str, Any]:
        req = await _parse(request, CompletionRequest)
        return await asyncio.to_thread(self._complete, req)

    async def chat_completions(self, request: Request) -> dict[str, Any]:
        req = await _parse(request, ChatRequest)
        return await asyncio.to_thread(self._chat, req)

    async def models(self) -> dict[str, Any]:
        # max_model_len as vLLM's model card has it: clients size requests by it.
        card = {
            "id": self.model.name,
            "object": "model",
            "created": self.created,
            "owned_by": "sftlab",
            "max_model_len": self.model.context_length,
        }
        return {"object": "list", "data": [card]}

    def _check(self, model: str, prompt_len: int, max_tokens: int | None, param: str = "prompt") -> None:
        """Refuse a request for another model, an empty prompt, or one that does not fit the
        context window (see the module docstring); ``max_tokens`` None: chat's "up to the limit"."""
        if model != self.model.name:
            raise OpenAIError(f"The model `{model}` does not exist.", 404, "model_not_found")
        if prompt_len == 0:
            raise OpenAIError(f"{param}: must not be empty")
        limit = self.model.context_length
        if prompt_len + (1 if max_tokens is None else max_tokens) > limit:
            raise context_length_exceeded(limit, prompt_len, max_tokens, param)

    def _complete(self, req: CompletionRequest) -> dict[str, Any]:
        prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
        encoded = [self.model.encode(p) for p in prompts]
        # One prompt that does not fit refuses the whole list, as vLLM does.
        for enc in encoded:
            self._check(req.model, len(enc.ids), req.max_tokens)
        gens = self.model.generate([e.ids for e in encoded], req.sampling(req.max_tokens))
        logprobs = (
            self._logprobs(prompts, encoded, gens, req.logprobs, req.echo)
            if req.logprobs is not None
            else [None] * len(gens)
        )
        choices = [
            {"index": i, "text": (p if req.echo else "") + g.text, "finish_reason": g.finish_reason, "logprobs": lp}
            for i, (p, g, lp) in enumerate(zip(prompts, gens, logprobs, strict=True))
        ]
        return {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": self.model.name,
            "choices": choices,
            "usage": _usage(sum(len(e.ids) for e in encoded), sum(g.n_tokens for g in gens)),
        }

    def _logprobs(
        self, prompts: list[str], encoded: list[Encoded], gens: list[Generation], top_k: int, echo: bool
    ) -> list[dict[str, Any]]:
        """Legacy-completions logprobs; with echo they cover the prompt, offsets index the returned text."""
        sequences, starts, offsets = [], [], []
        for prompt, enc, gen in zip(prompts, encoded, gens, strict=True):
            ids, gen_offsets = self.model.completion_tokens(gen)
            base = len(prompt) if echo else 0
            sequences.append(enc.ids + ids)
            starts.append(0 if echo else len(enc.ids))
            offsets.append((enc.offsets if echo else []) + [base + o for o in gen_offsets])
        text = self.model.token_text
        out: list[dict[str, Any]] = []
        for seq, start, offs, scores in zip(
            sequences, starts, offsets, self.model.score(sequences, top_k), strict=True
        ):
            tops = scores.top_logprobs[start:]
            out.append(
                {
                    "tokens": [text(t) for t in seq[start:]],
                    "token_logprobs": scores.token_logprobs[start:],
                    "top_logprobs": [None if d is None else {text(t): lp for t, lp in d.items()} for d in tops],
                    "text_offset": offs,
                }
            )
        return out

    def _chat(self, req: ChatRequest) -> dict[str, Any]:
        try:
            prompt = self.model.chat_prompt([m.model_dump() for m in req.messages])
        except ValueError as exc:  # e.g. the tokenizer has no chat template
            raise OpenAIError(f"messages: {' '.join(str(exc).split())}") from None
        enc = self.model.encode(prompt, add_special_tokens=False)  # the template adds its own
        self._check(req.model, len(enc.ids), req.max_tokens, param="messages")
        # OpenAI chat has no default cap: generate up to the context limit (or an end of turn).
        max_tokens = req.max_tokens if req.max_tokens is not None else self.model.context_length - len(enc.ids)
        gen = self.model.generate([enc.ids], req.sampling(max_tokens))[0]
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": gen.text},
            "finish_reason": gen.finish_reason,
            "logprobs": None,
        }
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model.name,
            "choices": [choice],
            "usage": _usage(len(enc.ids), gen.n_tokens),
        }
