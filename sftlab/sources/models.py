"""Resolving and loading models named by URI: local folders, ``s3://`` prefixes, hub ids, ``tiny:``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sftlab.errors import SftlabError
from sftlab.spec.job import RunContext
from sftlab.spec.schema import ModelSpec
from sftlab.spec.uris import classify_uri

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "adapter_model.safetensors")


def resolve(model: ModelSpec, ctx: RunContext) -> str:
    """A path or hub id that transformers can load; S3 and tiny models are materialised locally."""
    kind = classify_uri(model.uri)
    if kind == "tiny":
        from sftlab.sources.tiny import resolve_tiny

        return str(resolve_tiny(model.uri, ctx.cache_dir))
    if kind == "s3":
        from sftlab.sources.uris import download

        return str(download(model.uri, ctx.cache_dir, ctx.storage))
    if kind == "local":
        path = Path(model.uri.removeprefix("file://"))
        if path.suffix == ".gguf":
            from sftlab.sources.gguf import converted

            return str(converted(path, ctx.cache_dir))
        check_model_dir(path, model.name)
        return str(path)
    return model.uri  # hub id: transformers resolves (and caches) it


def local_dir(model: ModelSpec, ctx: RunContext) -> str:
    """A local folder with the model's files (hub models are downloaded to the hub cache)."""
    source = resolve(model, ctx)
    if classify_uri(model.uri) != "hub":
        return source
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(source, revision=model.revision, allow_patterns=["*.json", "*.safetensors"])
    except Exception as exc:  # noqa: BLE001 - hub errors vary; one line for the user
        raise SftlabError(f"model {model.name}: cannot download {source} ({str(exc).splitlines()[0]})") from None


def check_model_dir(path: Path, label: str) -> None:
    if not path.is_dir():
        raise SftlabError(f"model {label}: {path} is not a folder")
    if not any((path / f).exists() for f in WEIGHT_FILES) and not list(path.glob("*.safetensors")):
        raise SftlabError(f"model {label}: {path} has no weights (expected *.safetensors or pytorch_model.bin)")


def device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def attention_implementation() -> str:
    """FlashAttention-2 on CUDA when installed (fastest for long sequences), else PyTorch SDPA."""
    import importlib.util

    import torch

    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def load_tokenizer(source: str, revision: str | None = None) -> Any:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source, revision=revision)
    except OSError as exc:
        raise SftlabError(f"{source}: cannot load a tokenizer ({str(exc).splitlines()[0]})") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(source: str, revision: str | None = None, dtype: str = "auto") -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    torch_dtype = torch.float32
    if dtype == "auto" and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        torch_dtype = torch.bfloat16
    try:
        model: Any = AutoModelForCausalLM.from_pretrained(
            source, revision=revision, dtype=torch_dtype, attn_implementation=attention_implementation()
        )
    except OSError as exc:
        raise SftlabError(f"{source}: cannot load the model ({str(exc).splitlines()[0]})") from None
    return model.to(device()).eval()


def check_pair(model: Any, tokenizer: Any, label: str) -> None:
    """A tokenizer that emits ids past the model's embeddings (a mismatched pair) would crash deep in
    torch with an index error mid-run; say so in one line before anything runs."""
    embeddings = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > embeddings:
        raise SftlabError(
            f"model {label}: its tokenizer has {len(tokenizer)} tokens but the model's embeddings only {embeddings}; "
            "the tokenizer files do not belong to these weights"
        )
