"""GGUF checkpoints as ordinary transformers models: dequantised once, cached as safetensors.

transformers reads GGUF (``from_pretrained(dir, gguf_file=...)``) by dequantising every tensor
to float32, but the loaded model keeps a ``quantization_config`` that stops it from being saved
or fine-tuned like a plain model. So the model is rebuilt from its config without that entry and
given the dequantised weights; model and tokenizer are saved as a normal folder that every stage
(training, serving, weight analysis) reads. Conversion needs the ``gguf`` package.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from sftlab.errors import SftlabError

DONE = ".sftlab-converted"


def _key(path: Path) -> str:
    stat = path.stat()
    return hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]


def converted(path: Path, cache_dir: Path) -> Path:
    """A folder with the GGUF file's model as safetensors + tokenizer, converted on first use."""
    if not path.is_file():
        raise SftlabError(f"{path}: no such GGUF file")
    out = cache_dir / "gguf" / f"{path.stem}-{_key(path)}"
    if (out / DONE).exists():
        return out
    try:
        import gguf  # noqa: F401 - transformers needs it to read the file
    except ImportError:
        raise SftlabError(f"{path}: reading GGUF models needs the gguf package (pip install gguf)") from None
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = str(path.parent), path.name
    try:
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    except Exception as exc:  # noqa: BLE001 - unsupported architectures and corrupt files raise many types
        raise SftlabError(
            f"{path}: cannot read this GGUF model ({type(exc).__name__}: {str(exc).splitlines()[0]})"
        ) from None
    config = AutoConfig.for_model(**{k: v for k, v in loaded.config.to_dict().items() if k != "quantization_config"})
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict())
    partial = out.with_name(out.name + f".partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial, safe_serialization=True)
    tokenizer.save_pretrained(partial)
    (partial / DONE).write_text(str(path))
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)  # a kill mid-conversion leaves only a .partial folder, never a half model
    return out
