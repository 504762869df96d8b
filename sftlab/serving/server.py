"""A local KServe model server that speaks the OpenAI completions wire format.

Evaluation talks to models through the OpenAI routes that the cluster's KServe Hugging Face
runtime serves, so the same client code runs locally and on the cluster. kserve's own OpenAI
classes need vllm (CUDA-only), so this module implements the routes on kserve's FastAPI app
with plain transformers, and binds loopback only (kserve hard-codes ``0.0.0.0``).

Run: ``python -m sftlab.serving.server --model-dir DIR [--adapter-dir DIR] --name NAME --port PORT``.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import functools
import logging
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import kserve
import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from kserve import model_server as kserve_model_server
from kserve.logging import KSERVE_LOG_CONFIG, configure_logging
from kserve.protocol.rest.server import RESTServer
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from transformers import AutoModelForCausalLM, AutoTokenizer, StoppingCriteria, StoppingCriteriaList

from sftlab.errors import SftlabError

log = logging.getLogger("sftlab.serving")

# Upper bound on logits held at once while scoring (batch x length x vocab floats, ~512 MB).
_SCORE_BUDGET = 2**27


# ---------------------------------------------------------------------------------------------
# The model: generation and scoring over token ids.


@dataclass(frozen=True)
class Encoded:
    """Prompt token ids and, per token, the character offset where its text starts."""

    ids: list[int]
    offsets: list[int]


@dataclass(frozen=True)
class Sampling:
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass(frozen=True)
class Generation:
    """One completion: ``token_ids`` are the generated tokens before EOS (``text`` may be cut
    shorter by a stop string); ``n_tokens`` counts what the model produced, EOS included."""

    token_ids: list[int]
    text: str
    finish_reason: Literal["stop", "length"]
    n_tokens: int


@dataclass(frozen=True)
class Scores:
    """Per token of a sequence: log P(token | tokens before it) and the top alternatives.
    The first token has no context, so its entries are None."""

    token_logprobs: list[float | None]
    top_logprobs: list[dict[int, float] | None]


class _StopOnText(StoppingCriteria):
    """Stops a row once its generated text (not the prompt) contains a stop string, as vLLM does."""

    def __init__(self, tokenizer: Any, stops: tuple[str, ...], prompt_len: int):
        self.tokenizer, self.stops, self.prompt_len = tokenizer, stops, prompt_len

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_len :], skip_special_tokens=True)
        done = [any(stop in text for stop in self.stops) for text in texts]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


class CausalLM(kserve.Model):
    """A Hugging Face causal LM (optionally with a LoRA adapter merged in) registered with kserve."""

    def __init__(self, name: str, model_dir: str, adapter_dir: str | None = None):
        super().__init__(name)
        self.model_dir, self.adapter_dir = model_dir, adapter_dir
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        # One forward pass at a time: requests arrive on several threads, the model is shared.
        self._lock = threading.Lock()

    def load(self) -> bool:
        tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        if not tokenizer.is_fast:
            raise SftlabError(f"{self.model_dir}: needs a fast tokenizer (character offsets for logprobs)")
        model = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=torch.float32)
        if self.adapter_dir:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, self.adapter_dir).merge_and_unload()
        self.lm = model.to(self.device).eval()
        self.tokenizer = tokenizer
        eos = self.lm.generation_config.eos_token_id
        self.eos_ids = sorted({tokenizer.eos_token_id, *(eos if isinstance(eos, list) else [eos])} - {None})
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_ids[0]
        # Without a position limit in the config, the tokenizer's (a huge sentinel when unknown).
        limit = getattr(self.lm.config, "max_position_embeddings", None)
        self.context_length: int = limit or tokenizer.model_max_length
        self.ready = True
        adapter = f" + adapter {self.adapter_dir}" if self.adapter_dir else ""
        log.info("loaded %s%s on %s", self.model_dir, adapter, self.device)
        return self.ready

    async def predict(self, payload: Any, headers: dict[str, str] | None = None, response_headers: Any = None) -> Any:
        raise NotImplementedError("this server answers on /openai/v1/completions and /openai/v1/chat/completions")

    def encode(self, text: str, *, add_special_tokens: bool = True) -> Encoded:
        """Token ids with start offsets that tile the text: a token whose offsets the tokenizer
        trimmed (leading whitespace) starts where the previous token ended."""
        enc = self.tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
        offsets, prev_end = [], 0
        for start, end in enc["offset_mapping"]:
            offsets.append(min(start, prev_end))
            prev_end = max(prev_end, end)
        return Encoded(enc["input_ids"], offsets)

    def chat_prompt(self, messages: list[dict[str, str]]) -> str:
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def token_text(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id])

    def completion_tokens(self, gen: Generation) -> tuple[list[int], list[int]]:
        """The generated tokens that start inside the (possibly stop-cut) text, with their offsets."""
        decode = functools.partial(self.tokenizer.decode, skip_special_tokens=True)
        offsets = [len(decode(gen.token_ids[:i])) for i in range(len(gen.token_ids))]
        kept = [(t, o) for t, o in zip(gen.token_ids, offsets) if o < len(gen.text)]
        return [t for t, _ in kept], [o for _, o in kept]

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], sampling: Sampling) -> list[Generation]:
        """Generate for all prompts in one left-padded batch."""
        if sampling.max_tokens == 0:
            return [Generation([], "", "length", 0) for _ in prompts]
        ids, mask = self._pad(prompts, left=True)
        kwargs: dict[str, Any] = {
            "max_new_tokens": sampling.max_tokens,
            "do_sample": sampling.temperature > 0,
            "pad_token_id": self.pad_id,
            "eos_token_id": self.eos_ids,
        }
        if sampling.temperature > 0:  # OpenAI semantics: no top-k unless asked (HF defaults to 50)
            kwargs.update(temperature=sampling.temperature, top_p=sampling.top_p, top_k=0)
        if sampling.stop:
            stop_on_text = _StopOnText(self.tokenizer, sampling.stop, ids.shape[1])
            kwargs["stopping_criteria"] = StoppingCriteriaList([stop_on_text])
        with self._lock:
            if sampling.seed is not None:
                torch.manual_seed(sampling.seed)
            out = self.lm.generate(input_ids=ids, attention_mask=mask, **kwargs)
        return [self._finish(row, sampling.stop) for row in out[:, ids.shape[1] :].tolist()]

    def _finish(self, row: list[int], stops: tuple[str, ...]) -> Generation:
        ends = set(self.eos_ids) | {self.pad_id}  # finished rows are padded after EOS or a stop
        end = next((i for i, t in enumerate(row) if t in ends), None)
        ids = row if end is None else row[:end]
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        cut = min((text.find(s) for s in stops if s in text), default=None)
        if cut is not None:
            return Generation(ids, text[:cut], "stop", len(ids))
        if end is None:
            return Generation(ids, text, "length", len(ids))
        return Generation(ids, text, "stop", len(ids) + 1)

    @torch.no_grad()
    def score(self, sequences: list[list[int]], top_k: int) -> list[Scores]:
        """Log-probabilities of every token given the tokens before it, in right-padded chunks
        (right padding keeps positions natural, so no position ids are needed)."""
        longest = max(len(s) for s in sequences)
        per_chunk = max(1, _SCORE_BUDGET // (longest * self.lm.config.vocab_size))
        results: list[Scores] = []
        for i in range(0, len(sequences), per_chunk):
            chunk = sequences[i : i + per_chunk]
            ids, mask = self._pad(chunk, left=False)
            with self._lock:
                logits = self.lm(input_ids=ids, attention_mask=mask).logits
            logp = torch.log_softmax(logits.float(), dim=-1)
            results.extend(_row_scores(row[: len(seq) - 1], seq, top_k) for row, seq in zip(logp, chunk))
        return results

    def _pad(self, rows: list[list[int]], *, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            span = slice(width - len(row), width) if left else slice(0, len(row))
            ids[i, span] = torch.tensor(row, dtype=torch.long)
            mask[i, span] = 1
        return ids.to(self.device), mask.to(self.device)


def _row_scores(logp: torch.Tensor, seq: list[int], top_k: int) -> Scores:
    """``logp[i]`` is the distribution that predicted ``seq[i + 1]``."""
    targets = torch.tensor(seq[1:], dtype=torch.long, device=logp.device)
    chosen = logp.gather(-1, targets[:, None])[:, 0].tolist()
    top_values, top_ids = logp.topk(min(top_k, logp.shape[-1]), dim=-1)
    tops = [
        {**dict(zip(ids, values)), token: lp}
        for ids, values, token, lp in zip(top_ids.tolist(), top_values.tolist(), seq[1:], chosen)
    ]
    return Scores([None, *chosen], [None, *tops])


# ---------------------------------------------------------------------------------------------
# The OpenAI wire format.

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

    def __init__(self, message: str, status: int = 400, code: str | None = None):
        super().__init__(message)
        self.status, self.code = status, code


async def _openai_error_handler(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, OpenAIError)
    body = {"message": str(exc), "type": "invalid_request_error", "param": None, "code": exc.code}
    return JSONResponse(status_code=exc.status, content={"error": body})


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
        card = {"id": self.model.name, "object": "model", "created": self.created, "owned_by": "sftlab"}
        return {"object": "list", "data": [card]}

    def _check(self, model: str, prompt_len: int, max_tokens: int) -> None:
        if model != self.model.name:
            raise OpenAIError(f"The model `{model}` does not exist.", 404, "model_not_found")
        if prompt_len == 0:
            raise OpenAIError("prompt: must not be empty")
        limit = self.model.context_length
        if prompt_len + max_tokens > limit:
            raise OpenAIError(
                f"This model's maximum context length is {limit} tokens; the request needs "
                f"{prompt_len + max_tokens} ({prompt_len} in the prompt, {max_tokens} to generate)."
            )

    def _complete(self, req: CompletionRequest) -> dict[str, Any]:
        prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
        encoded = [self.model.encode(p) for p in prompts]
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
            for i, (p, g, lp) in enumerate(zip(prompts, gens, logprobs))
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
    ) -> list[dict[str, list[Any]]]:
        """Legacy-completions logprobs; with echo they cover the prompt, offsets index the returned text."""
        sequences, starts, offsets = [], [], []
        for prompt, enc, gen in zip(prompts, encoded, gens):
            ids, gen_offsets = self.model.completion_tokens(gen)
            base = len(prompt) if echo else 0
            sequences.append(enc.ids + ids)
            starts.append(0 if echo else len(enc.ids))
            offsets.append((enc.offsets if echo else []) + [base + o for o in gen_offsets])
        text = self.model.token_text
        out = []
        for seq, start, offs, scores in zip(sequences, starts, offsets, self.model.score(sequences, top_k)):
            tops = scores.top_logprobs[start:]
            out.append({
                "tokens": [text(t) for t in seq[start:]],
                "token_logprobs": scores.token_logprobs[start:],
                "top_logprobs": [None if d is None else {text(t): lp for t, lp in d.items()} for d in tops],
                "text_offset": offs,
            })
        return out

    def _chat(self, req: ChatRequest) -> dict[str, Any]:
        try:
            prompt = self.model.chat_prompt([m.model_dump() for m in req.messages])
        except ValueError as exc:  # e.g. the tokenizer has no chat template
            raise OpenAIError(f"messages: {' '.join(str(exc).split())}") from None
        enc = self.model.encode(prompt, add_special_tokens=False)  # the template adds its own
        # OpenAI chat has no default cap: generate up to the context limit (or an end of turn).
        max_tokens = req.max_tokens if req.max_tokens is not None else max(0, self.model.context_length - len(enc.ids))
        self._check(req.model, len(enc.ids), max_tokens)
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


# ---------------------------------------------------------------------------------------------
# The kserve process.


class OpenAIRESTServer(RESTServer):
    """kserve's REST server, bound to ``host`` instead of the hard-coded 0.0.0.0, with the OpenAI
    routes added to kserve's own app (so /v1, /v2 and health routes keep working)."""

    def __init__(self, *args: Any, host: str, model: CausalLM, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.config.host = host
        self.routes = OpenAIRoutes(model)

    def create_application(self) -> None:
        super().create_application()
        self.routes.register(kserve_model_server.app)


def serve(model: CausalLM, host: str, port: int) -> None:
    """Run kserve's ModelServer (REST only, one worker) until SIGTERM/SIGINT."""
    # ModelServer.start builds its REST server from this module-level name.
    kserve_model_server.RESTServer = functools.partial(OpenAIRESTServer, host=host, model=model)
    kserve.ModelServer(http_port=port, enable_grpc=False, workers=1).start([model])


def _configure_logging() -> None:
    """kserve's logging, with uvicorn's access log moved from stdout to stderr."""
    config = copy.deepcopy(KSERVE_LOG_CONFIG)
    config["handlers"]["uvicorn_access"]["stream"] = "ext://sys.stderr"
    configure_logging(config)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s")


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m sftlab.serving.server", description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", required=True, help="Hugging Face model folder")
    parser.add_argument("--adapter-dir", help="PEFT LoRA adapter folder, merged into the model in memory")
    parser.add_argument("--name", required=True, help="model name clients send in the 'model' field")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = _parse_args(argv)
    _configure_logging()
    model = CausalLM(args.name, args.model_dir, args.adapter_dir)
    try:
        model.load()
    except Exception as exc:  # any load failure ends the process with one readable line
        log.error("cannot load model %s: %s", args.model_dir, " ".join(str(exc).split()))
        sys.exit(1)
    serve(model, args.host, args.port)


if __name__ == "__main__":
    main()
