"""Tiny causal LMs and tokenizers built offline, deterministically, for quickstarts and tests.

A ``tiny:`` URI names one, e.g. ``tiny:llama?hidden=64&layers=4&seed=0&pretrain=math``. It is
built once into a cache folder (atomically, so concurrent stages may race for it safely) and then
loads like any local model folder. ``pretrain`` runs a short causal-LM pass over a synthetic corpus
so that base models differ in what they already know, which gives data perplexity something to
predict.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from sftlab.spec.tiny_uri import TinySpec, parse_tiny_uri

# ChatML with {% generation %} markers so TRL can compute assistant-only loss masks.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}"
    "{% endgeneration %}{{ '\\n' }}"
    "{%- else %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{%- endif %}"
)


SPECIAL_TOKENS = ["<|pad|>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"]


_NAMES = ["Ana", "Ben", "Caro", "Dev", "Eli", "Fay", "Gus", "Hana", "Ivo", "Jun"]


_THINGS = ["apples", "books", "coins", "pens", "cards", "shells", "stamps", "marbles"]


_TOPICS = {
    "sky": "The sky looks blue because air scatters blue light more than red light.",
    "tea": "To make tea, heat water, pour it over the leaves and wait a few minutes.",
    "sleep": "Most adults feel best with seven to nine hours of sleep each night.",
    "rain": "Rain forms when water vapour cools, condenses into drops and falls.",
    "maps": "A map is a small drawing of a place that shows where things are.",
    "bread": "Bread rises because yeast makes gas bubbles inside the dough.",
    "moon": "The moon shines because it reflects light from the sun.",
    "plants": "Plants use sunlight, water and air to make their own food.",
}


def arithmetic_problem(rng: random.Random) -> tuple[str, str, int]:
    """One GSM8K-style problem: (question, worked answer ending in '#### N', N)."""
    name, thing = rng.choice(_NAMES), rng.choice(_THINGS)
    a, b = rng.randint(1, 9), rng.randint(1, 9)
    if rng.random() < 0.5:
        question = f"{name} has {a} {thing} and gets {b} more. How many {thing} does {name} have?"
        result, work = a + b, f"{a} + {b} = {a + b}"
    else:
        a, b = max(a, b), min(a, b)
        question = f"{name} has {a} {thing} and gives away {b}. How many {thing} are left?"
        result, work = a - b, f"{a} - {b} = {a - b}"
    return question, f"{work}\n#### {result}", result


def code_problem(rng: random.Random) -> tuple[str, str]:
    """One small Python task: (instruction, solution)."""
    op, sym = rng.choice([("add", "+"), ("subtract", "-"), ("multiply", "*")])
    k = rng.randint(1, 9)
    fname = f"{op}_{k}"
    return (
        f"Write a Python function {fname}(x) that returns x {sym} {k}.",
        f"def {fname}(x):\n    return x {sym} {k}",
    )


def chat_problem(rng: random.Random) -> tuple[str, str]:
    """One short general question and answer."""
    topic = rng.choice(sorted(_TOPICS))
    asks = [f"Tell me about {topic}.", f"Can you explain {topic}?", f"What should I know about {topic}?"]
    return rng.choice(asks), _TOPICS[topic]


def synthetic_text(kind: str, n: int, seed: int) -> Iterator[str]:
    """``n`` plain-text documents of one kind (or a mix) for tokenizer training and pretraining."""
    rng = random.Random(seed)
    for i in range(n):
        pick = kind if kind != "mixed" else ("math", "code", "chat")[i % 3]
        if pick == "math":
            q, a, _ = arithmetic_problem(rng)
        elif pick == "code":
            q, a = code_problem(rng)
        else:
            q, a = chat_problem(rng)
        yield f"{q}\n{a}"


def build_tokenizer(vocab: int = 1024, seed: int = 0):
    """A byte-level BPE tokenizer (digits split) with a ChatML chat template, trained in-process."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(synthetic_text("mixed", 600, seed)) + ["###Question: ###Answer: "], trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<|pad|>",
        eos_token="<|im_end|>",
        bos_token=None,
        unk_token=None,
        chat_template=CHAT_TEMPLATE,
        model_max_length=2048,
    )


def _build_model(spec: TinySpec, tokenizer):
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    torch.manual_seed(spec.seed)
    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden,
        intermediate_size=spec.hidden * 4,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.heads,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    config = LlamaConfig(**common) if spec.arch == "llama" else Qwen2Config(**common)
    model = AutoModelForCausalLM.from_config(config)
    if spec.pretrain != "none" and spec.pretrain_steps > 0:
        _pretrain(model, tokenizer, spec)
    return model


def _pretrain(model, tokenizer, spec: TinySpec) -> None:
    """A short plain causal-LM pass so the base model already knows some of one domain."""
    import torch

    texts = list(synthetic_text(spec.pretrain, spec.pretrain_steps * 8, spec.seed + 1))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for step in range(spec.pretrain_steps):
        batch = tokenizer(
            texts[step * 8 : (step + 1) * 8], return_tensors="pt", padding=True, truncation=True, max_length=96
        )
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        loss = model(**batch, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()


def build_tiny(out_dir: str | os.PathLike, spec: TinySpec | None = None) -> Path:
    """Write a tiny model + tokenizer (safetensors, HF layout) into ``out_dir``."""
    spec = spec or TinySpec()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(spec.vocab, spec.seed)
    model = _build_model(spec, tokenizer)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / "sftlab_tiny.json").write_text(json.dumps(spec.model_dump(), indent=2))
    return out


def default_cache_dir() -> Path:
    return Path(os.environ.get("SFTLAB_CACHE", Path.home() / ".cache" / "sftlab"))


def resolve_tiny(uri: str, cache_dir: Path | None = None) -> Path:
    """The local folder of a ``tiny:`` model, building it on first use."""
    spec = parse_tiny_uri(uri)
    root = (cache_dir or default_cache_dir()) / "tiny"
    target = root / f"{spec.arch}-{spec.key}"
    if (target / "sftlab_tiny.json").exists():
        return target
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".build-", dir=root))
    try:
        build_tiny(staging, spec)
        with contextlib.suppress(OSError):  # another process finished first; theirs is identical
            staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
