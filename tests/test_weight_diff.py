"""weight_diff against direct torch computations on a tiny Llama built in-process."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

from sftlab import weight_diff
from sftlab.errors import SftlabError
from sftlab.weight_diff import compare_checkpoints, compare_lora

LAYERS = 4


def tiny_llama(seed: int = 0, **overrides):
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(seed)
    config = dict(
        vocab_size=96,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        num_key_value_heads=4,
        tie_word_embeddings=False,
    )
    return AutoModelForCausalLM.from_config(LlamaConfig(**{**config, **overrides}))


def save(model, folder: Path, **kwargs) -> Path:
    model.save_pretrained(folder, safe_serialization=True, **kwargs)
    return folder


def perturbed(model, seed: int = 1):
    """A copy with known changes: layer 1 q_proj gets noise, layer 2 down_proj is scaled by 1.5."""
    tuned = tiny_llama()
    tuned.load_state_dict(model.state_dict())
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layers = tuned.model.layers
        q = layers[1].self_attn.q_proj.weight
        q.add_(0.05 * torch.randn(q.shape, generator=generator))
        layers[2].mlp.down_proj.weight.mul_(1.5)
    return tuned


def expected_rows(base_state: dict, tuned_state: dict) -> dict[str, dict[str, float]]:
    out = {}
    for name, b in base_state.items():
        b, t = b.double(), tuned_state[name].double()
        d = t - b
        out[name] = {
            "delta_norm": float(d.norm()),
            "base_norm": float(b.norm()),
            "rel_change": float(d.norm() / b.norm()),
            "cosine": float((b * t).sum() / (b.norm() * t.norm())),
            "max_abs_delta": float(d.abs().max()),
        }
    return out


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> tuple[torch.nn.Module, Path]:
    model = tiny_llama()
    return model, save(model, tmp_path_factory.mktemp("base"))


@pytest.fixture(scope="module")
def tuned(base, tmp_path_factory) -> tuple[torch.nn.Module, Path]:
    model = perturbed(base[0])
    return model, save(model, tmp_path_factory.mktemp("tuned"))


def test_per_tensor_values_match_torch(base, tuned):
    diff = compare_checkpoints(base[1], tuned[1])
    expected = expected_rows(base[0].state_dict(), tuned[0].state_dict())
    rows = {r["name"]: r for r in diff.rows()}
    assert set(rows) == set(expected)
    for name, want in expected.items():
        for field, value in want.items():
            assert rows[name][field] == pytest.approx(value, rel=1e-6, abs=1e-9), (name, field)
    scaled = rows["model.layers.2.mlp.down_proj.weight"]
    assert scaled["rel_change"] == pytest.approx(0.5) and scaled["cosine"] == pytest.approx(1.0)
    assert rows["model.layers.0.self_attn.q_proj.weight"]["delta_norm"] == 0


def test_aggregates_and_metric_names(base, tuned, tmp_path):
    diff = compare_checkpoints(base[1], tuned[1])
    state_b, state_t = base[0].state_dict(), tuned[0].state_dict()

    def rel(names: list[str]) -> float:
        delta = math.sqrt(sum(float((state_t[n].double() - state_b[n].double()).norm()) ** 2 for n in names))
        return delta / math.sqrt(sum(float(state_b[n].double().norm()) ** 2 for n in names))

    metrics = diff.metrics()
    layer2 = [n for n in state_b if n.startswith("model.layers.2.")]
    assert metrics["weights/layer_2/rel_change"] == pytest.approx(rel(layer2))
    assert metrics["weights/layer_0/rel_change"] == 0
    assert metrics["weights/total/rel_change"] == pytest.approx(rel(list(state_b)))
    downs = [n for n in state_b if n.endswith("down_proj.weight")]
    assert metrics["weights/module_down_proj/rel_change"] == pytest.approx(rel(downs))
    middle = [n for n in state_b if n.startswith("model.layers.2.")]  # 4 layers: bottom 0-1, middle 2, top 3
    assert metrics["weights/depth_middle/rel_change"] == pytest.approx(rel(middle))
    assert metrics["weights/depth_top/rel_change"] == 0
    pattern = re.compile(
        r"weights/(layer_\d+|module_(q|k|v|o|gate|up|down)_proj|module_(norm|embed|lm_head|other)"
        r"|depth_(bottom|middle|top)|total)/rel_change"
    )
    assert all(pattern.fullmatch(k) for k in metrics), metrics.keys()
    assert {f"weights/layer_{i}/rel_change" for i in range(LAYERS)} <= set(metrics)
    assert {f"weights/module_{m}/rel_change" for m in ("embed", "lm_head", "norm")} <= set(metrics)
    png = diff.heatmap_png(tmp_path / "heat.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _same_rows(a: list[dict], b: list[dict]) -> None:
    assert [r["name"] for r in a] == [r["name"] for r in b]
    for x, y in zip(a, b, strict=True):
        for field in ("delta_norm", "base_norm", "tuned_norm", "cosine", "max_abs_delta"):
            assert x[field] == pytest.approx(y[field], rel=1e-9, abs=1e-12), (x["name"], field)


def test_sharded_and_row_chunked_reads_equal_whole_reads(base, tuned, tmp_path, monkeypatch):
    whole = compare_checkpoints(base[1], tuned[1]).rows()
    sharded = save(tuned[0], tmp_path / "sharded", max_shard_size="20KB")
    assert (sharded / "model.safetensors.index.json").is_file()
    assert len(list(sharded.glob("*.safetensors"))) > 1
    assert compare_checkpoints(base[1], sharded).rows() == whole
    monkeypatch.setattr(weight_diff, "CHUNK_ELEMENTS", 100)  # a few rows per read, as for 7B tensors
    _same_rows(compare_checkpoints(base[1], sharded).rows(), whole)


def test_bfloat16_checkpoints(base, tuned, tmp_path):
    folders = []
    for model, name in ((base[0], "b"), (tuned[0], "t")):
        copy = tiny_llama()
        copy.load_state_dict(model.state_dict())
        folders.append(save(copy.to(torch.bfloat16), tmp_path / name))
    states = [{k: v.to(torch.bfloat16) for k, v in m[0].state_dict().items()} for m in (base, tuned)]
    rows = {r["name"]: r for r in compare_checkpoints(*folders).rows()}
    for name, want in expected_rows(*states).items():
        assert rows[name]["delta_norm"] == pytest.approx(want["delta_norm"], rel=1e-9, abs=1e-12)


@pytest.mark.parametrize(
    "lora",
    [
        {"r": 4, "lora_alpha": 8, "target_modules": "all-linear"},
        {
            "r": 3,
            "lora_alpha": 5,
            "use_rslora": True,
            "target_modules": ["q_proj", "down_proj", "embed_tokens"],
            "modules_to_save": ["lm_head"],
        },
    ],
    ids=["all-linear", "rslora-embedding-modules_to_save"],
)
@pytest.mark.filterwarnings("ignore:Setting `save_embedding_layers`")
def test_lora_equals_merged_model(base, tmp_path, monkeypatch, lora):
    from peft import LoraConfig, get_peft_model

    model = tiny_llama()
    model.load_state_dict(base[0].state_dict())
    peft_model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", lora_dropout=0.0, **lora))
    torch.manual_seed(3)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name or "modules_to_save" in name:
                param.add_(0.05 * torch.randn_like(param))  # lora_B starts at zero: make ΔW non-trivial
    peft_model.save_pretrained(tmp_path / "adapter")
    merged = save(peft_model.merge_and_unload(), tmp_path / "merged")

    via_adapter = {r["name"]: r for r in compare_lora(base[1], tmp_path / "adapter").rows()}
    via_merge = {r["name"]: r for r in compare_checkpoints(base[1], merged).rows()}
    assert set(via_adapter) == set(via_merge)
    for name, row in via_merge.items():
        for field in ("delta_norm", "base_norm", "tuned_norm", "rel_change", "cosine", "max_abs_delta"):
            assert via_adapter[name][field] == pytest.approx(row[field], rel=1e-5, abs=1e-5), (name, field)
    assert via_merge["model.layers.0.self_attn.q_proj.weight"]["delta_norm"] > 0
    assert via_adapter["model.norm.weight"]["delta_norm"] == 0
    monkeypatch.setattr(weight_diff, "CHUNK_ELEMENTS", 50)  # ΔW rows built block by block, embeddings included
    _same_rows(compare_lora(base[1], tmp_path / "adapter").rows(), list(via_adapter.values()))


def test_tied_embeddings_compare_against_the_shared_tensor(tmp_path):
    tied = tiny_llama(tie_word_embeddings=True)
    base_dir = save(tied, tmp_path / "tied")
    untied = tiny_llama()
    untied.load_state_dict({**tied.state_dict(), "lm_head.weight": tied.model.embed_tokens.weight * 1.25})
    diff = compare_checkpoints(base_dir, save(untied, tmp_path / "untied"))
    head = {r["name"]: r for r in diff.rows()}["lm_head.weight"]
    assert head["tied_to"] == "model.embed_tokens.weight"
    assert head["rel_change"] == pytest.approx(0.25)
    assert diff.metrics()["weights/module_embed/rel_change"] == 0


def _one_line_error(call) -> str:
    with pytest.raises(SftlabError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    return message


def test_errors_are_one_line(base, tmp_path):
    fewer = save(tiny_llama(num_hidden_layers=LAYERS - 1), tmp_path / "fewer")
    message = _one_line_error(lambda: compare_checkpoints(base[1], fewer))
    assert message.startswith("architecture mismatch: base has ") and f"model.layers.{LAYERS - 1}." in message
    wider = save(tiny_llama(intermediate_size=48), tmp_path / "wider")
    assert "shape mismatch for model.layers.0.mlp.down_proj.weight" in _one_line_error(
        lambda: compare_checkpoints(base[1], wider)
    )
    (tmp_path / "empty").mkdir()
    assert "no safetensors weights" in _one_line_error(lambda: compare_checkpoints(base[1], tmp_path / "empty"))
    assert "adapter_config.json" in _one_line_error(lambda: compare_lora(base[1], tmp_path / "empty"))
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "model.safetensors").write_bytes(b"not safetensors")
    assert "cannot read safetensors weights" in _one_line_error(
        lambda: compare_checkpoints(base[1], tmp_path / "corrupt")
    )
