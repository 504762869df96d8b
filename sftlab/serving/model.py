"""The served model: batched generation and prompt scoring with plain transformers.

Used by the local evaluation server (``sftlab.serving.server``); a ``kserve.Model`` so kserve's
health and model routes report on it.
"""

from __future__ import annotations

import functools
import logging
import threading
from dataclasses import dataclass
from typing import Any, Literal

import kserve
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, StoppingCriteria, StoppingCriteriaList

from sftlab.errors import SftlabError

log = logging.getLogger(__name__)

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
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)  # type: ignore[return-value]


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
        model: Any = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=torch.float32)
        if self.adapter_dir:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, self.adapter_dir).merge_and_unload()
        # transformers types these as unions of every tokenizer/model class; this one is a causal LM
        # with a fast tokenizer (checked above).
        self.lm: Any = model.to(self.device).eval()
        self.tokenizer: Any = tokenizer
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
        kept = [(t, o) for t, o in zip(gen.token_ids, offsets, strict=True) if o < len(gen.text)]
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
            results.extend(_row_scores(row[: len(seq) - 1], seq, top_k) for row, seq in zip(logp, chunk, strict=True))
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
        {**dict(zip(ids, values, strict=True)), token: lp}
        for ids, values, token, lp in zip(top_ids.tolist(), top_values.tolist(), seq[1:], chosen, strict=True)
    ]
    return Scores([None, *chosen], [None, *tops])
