"""weight_diff against direct torch computations on a tiny Llama built in-process."""

from __future__ import annotations

import copy
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sftlab import weight_diff
from sftlab.errors import SftlabError
from sftlab.spec.schema import WeightsConfig
from sftlab.weight_diff import compare_checkpoints, compare_lora

LAYERS = 4


def tiny_llama(seed: int = 0, **overrides):
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(seed)
    config = {
        "vocab_size": 96,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "tie_word_embeddings": False,
    }
    return AutoModelForCausalLM.from_config(LlamaConfig(**{**config, **overrides}))


def save(model, folder: Path, **kwargs) -> Path:
    model.save_pretrained(folder, safe_serialization=True, **kwargs)
    return folder


def perturbed(model, seed: int = 1):
    """A copy with known changes: layer 1 q_proj gets noise, layer 2 down_proj is scaled by 1.5."""
    tuned = copy.deepcopy(model)
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


def joined(state: dict, names: list[str]) -> torch.Tensor:
    """The named tensors as one float64 vector: a group's change is that of this vector."""
    return torch.cat([state[n].double().reshape(-1) for n in names])


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
        return float((joined(state_t, names) - joined(state_b, names)).norm() / joined(state_b, names).norm())

    metrics = diff.metrics()
    layer2 = [n for n in state_b if n.startswith("model.layers.2.")]
    assert metrics["weights/layer_2/rel_change"] == pytest.approx(rel(layer2))
    assert metrics["weights/layer_0/rel_change"] == 0
    assert metrics["weights/total/rel_change"] == pytest.approx(rel(list(state_b)))
    downs = [n for n in state_b if n.endswith("down_proj.weight")]
    b, t = joined(state_b, downs), joined(state_t, downs)
    assert metrics["weights/module_down_proj/rel_change"] == pytest.approx(rel(downs))
    assert metrics["weights/module_down_proj/abs_change"] == pytest.approx(float((t - b).norm()))
    assert metrics["weights/module_down_proj/cosine"] == pytest.approx(float(b @ t / (b.norm() * t.norm())))
    assert metrics["weights/module_down_proj/max_abs_change"] == pytest.approx(float((t - b).abs().max()))
    assert metrics["weights/module_q_proj/cosine"] < 1
    middle = [n for n in state_b if n.startswith("model.layers.2.")]  # 4 layers: bottom 0-1, middle 2, top 3
    assert metrics["weights/depth_middle/rel_change"] == pytest.approx(rel(middle))
    assert metrics["weights/depth_middle/abs_change"] == pytest.approx(
        float((joined(state_t, middle) - joined(state_b, middle)).norm())
    )
    assert metrics["weights/depth_top/rel_change"] == 0
    pattern = re.compile(
        r"weights/((layer_\d+)/rel_change|depth_(bottom|middle|top)/(rel|abs)_change"
        r"|(module_((q|k|v|o|gate|up|down)_proj|norm|embed|lm_head|other)|total)/(rel_change|abs_change|cosine|max_abs_change))"
    )
    assert all(pattern.fullmatch(k) for k in metrics), metrics.keys()
    assert {f"weights/layer_{i}/rel_change" for i in range(LAYERS)} <= set(metrics)
    assert {f"weights/module_{m}/rel_change" for m in ("embed", "lm_head", "norm")} <= set(metrics)
    assert len(metrics) == LAYERS + 4 * len(diff.by_module()) + 2 * 3 + 4  # bounded: detail goes to the table
    png = diff.heatmap_png(tmp_path / "heat.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = diff.table()
    assert len(table) == len(state_b)
    assert {"delta_norm", "rel_change", "cosine", "max_abs_delta", "layer", "module"} <= set(table.columns)
    assert table.set_index("name").loc["model.layers.2.mlp.down_proj.weight", "rel_change"] == pytest.approx(0.5)


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
    monkeypatch.setattr(weight_diff.measure, "CHUNK_ELEMENTS", 100)  # a few rows per read, as for 7B tensors
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

    spectral = WeightsConfig(spectral=True, spectral_top_k=3, spectral_max_matrices=1000)
    via_adapter = {r["name"]: r for r in compare_lora(base[1], tmp_path / "adapter", spectral).rows()}
    via_merge = {r["name"]: r for r in compare_checkpoints(base[1], merged, spectral).rows()}
    assert set(via_adapter) == set(via_merge)
    for name, row in via_merge.items():
        for field in ("delta_norm", "base_norm", "tuned_norm", "rel_change", "cosine", "max_abs_delta"):
            assert via_adapter[name][field] == pytest.approx(row[field], rel=1e-5, abs=1e-5), (name, field)
        # spectra from the r×r core of B·A·scale equal those of the merged model's ΔW
        assert (via_adapter[name]["top_singular_values"] is None) == (row["top_singular_values"] is None), name
        if row["top_singular_values"] is not None:
            assert via_adapter[name]["top_singular_values"] == pytest.approx(
                row["top_singular_values"], rel=1e-4, abs=1e-6
            )
            assert via_adapter[name]["effective_rank"] == pytest.approx(
                row["effective_rank"], rel=2e-2
            )  # merge adds float32 rounding noise
    assert via_merge["model.layers.0.self_attn.q_proj.weight"]["delta_norm"] > 0
    assert via_adapter["model.norm.weight"]["delta_norm"] == 0
    monkeypatch.setattr(weight_diff.measure, "CHUNK_ELEMENTS", 50)  # ΔW rows built block by block, embeddings included
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


# ---------------------------------------------------------------------------------------------
# Spectral view


def low_rank_matrix(rows: int, cols: int, rank: int, decay: float = 0.6, seed: int = 0) -> torch.Tensor:
    """U·diag(decay^i)·Vᵀ: a ΔW with a known, decaying spectrum, like fine-tuning updates."""
    generator = torch.Generator().manual_seed(seed)
    u = torch.linalg.qr(torch.randn(rows, rank, generator=generator, dtype=torch.float64)).Q
    v = torch.linalg.qr(torch.randn(cols, rank, generator=generator, dtype=torch.float64)).Q
    sigma = decay ** torch.arange(rank, dtype=torch.float64)
    return ((u * sigma) @ v.T).float()


def test_effective_rank_is_roy_vetterli():
    assert weight_diff.effective_rank(torch.tensor([3.0, 0.0])) == pytest.approx(1.0)
    assert weight_diff.effective_rank(torch.ones(5)) == pytest.approx(5.0)
    p = [0.5, 0.25, 0.25]
    assert weight_diff.effective_rank(torch.tensor([2.0, 1.0, 1.0])) == pytest.approx(
        math.exp(-sum(x * math.log(x) for x in p))
    )
    assert weight_diff.effective_rank(torch.zeros(3)) == 0


def test_matrix_spectrum_matches_svdvals(monkeypatch):
    delta = low_rank_matrix(300, 120, rank=40)
    want = torch.linalg.svdvals(delta.double())
    energy = float((want[:6] ** 2).sum() / (want**2).sum())
    exact = weight_diff.matrix_spectrum(delta, top_k=6, seed=0)
    assert exact.exact
    assert list(exact.singular_values) == pytest.approx(want[:6].tolist(), rel=1e-5)
    assert exact.effective_rank == pytest.approx(weight_diff.effective_rank(want), rel=1e-5)
    assert exact.top_k_energy == pytest.approx(energy, rel=1e-5)
    monkeypatch.setattr(weight_diff.spectra, "EXACT_SVD_MAX_DIM", 16)  # force the randomized SVD
    randomized = weight_diff.matrix_spectrum(delta, top_k=6, seed=0)
    assert not randomized.exact
    assert list(randomized.singular_values) == pytest.approx(want[:6].tolist(), rel=1e-4)
    assert randomized.top_k_energy == pytest.approx(energy, rel=1e-4)
    assert weight_diff.matrix_spectrum(delta, top_k=6, seed=0) == randomized  # seeded: reproducible


def test_spectral_view_samples_changed_matrices_with_a_seed(base, tmp_path):
    tuned = tiny_llama()
    with torch.no_grad():
        for i, param in enumerate(tuned.parameters()):
            param.copy_(list(base[0].parameters())[i] + (0.01 * torch.randn_like(param) if param.dim() == 2 else 0))
    tuned_dir = save(tuned, tmp_path / "tuned")
    config = WeightsConfig(spectral=True, spectral_top_k=3, spectral_max_matrices=5, seed=1)
    diff = compare_checkpoints(base[1], tuned_dir, config)
    sampled = [t for t in diff.tensors if t.spectrum]
    assert len(sampled) == 5 and all(len(t.shape) == 2 for t in sampled)
    assert [t.name for t in compare_checkpoints(base[1], tuned_dir, config).spectra()] == [t.name for t in sampled]
    other_seed = compare_checkpoints(base[1], tuned_dir, config.model_copy(update={"seed": 2})).spectra()
    assert {t.name for t in other_seed} != {t.name for t in sampled}
    states = base[0].state_dict(), tuned.state_dict()
    for tensor in sampled:
        want = torch.linalg.svdvals(states[1][tensor.name].double() - states[0][tensor.name].double())
        assert tensor.spectrum and list(tensor.spectrum.singular_values) == pytest.approx(want[:3].tolist(), rel=1e-5)
    metrics = diff.metrics()
    assert metrics["weights/spectral/matrices"] == 5
    assert metrics["weights/spectral/effective_rank_mean"] == pytest.approx(
        sum(t.spectrum.effective_rank for t in sampled) / 5
    )
    assert not compare_checkpoints(base[1], tuned_dir).spectra()  # off by default


# ---------------------------------------------------------------------------------------------
# Memory

# Runs in a fresh interpreter: after a warm-up, RLIMIT_DATA caps private writable memory (heap,
# anonymous mmaps, and the copy-on-write file mappings safetensors reads through, counted at their
# full size although only touched pages get resident) at its current size plus the two checkpoints'
# mapped bytes plus HEADROOM. Chunked reads fit; reading one 16 MB tensor whole (as float64) does not.
_BOUNDED_RUN = """
import re, resource, sys
from pathlib import Path
from sftlab import weight_diff
small, base, tuned, headroom, chunk = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
weight_diff.compare_checkpoints(Path(small), Path(small))  # lazy imports, thread pools, allocator caches
weight_diff.measure.CHUNK_ELEMENTS = chunk
mapped = sum(p.stat().st_size for folder in (base, tuned) for p in Path(folder).glob("*.safetensors"))
data = int(re.search(r"VmData:\\s+(\\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024
resource.setrlimit(resource.RLIMIT_DATA, (data + mapped + headroom, resource.RLIM_INFINITY))
diff = weight_diff.compare_checkpoints(Path(base), Path(tuned))
print(f"{diff.total().rel_change:.6f}")
"""
BIG_TENSORS, BIG_ELEMENTS, HEADROOM = 3, 1 << 22, 24 << 20  # 3 × 16 MB float32 per model; 24 MB allowed


def _bounded_run(small: Path, base_dir: Path, tuned_dir: Path, chunk: int) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MALLOC_ARENA_MAX": "1", "OMP_NUM_THREADS": "1"}
    args = [str(small), str(base_dir), str(tuned_dir), str(HEADROOM), str(chunk)]
    command = [sys.executable, "-c", _BOUNDED_RUN, *args]
    return subprocess.run(command, check=False, capture_output=True, text=True, env=env, timeout=120)


def test_memory_stays_bounded_by_a_few_blocks(base, tmp_path):
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(0)
    for name in ("base", "tuned"):
        (tmp_path / name).mkdir()
        tensors = {
            f"model.layers.{i}.mlp.up_proj.weight": torch.randn(BIG_ELEMENTS // 1024, 1024, generator=generator)
            for i in range(BIG_TENSORS)
        }
        save_file(tensors, tmp_path / name / "model.safetensors")
    bounded = _bounded_run(base[1], tmp_path / "base", tmp_path / "tuned", weight_diff.measure.CHUNK_ELEMENTS)
    assert bounded.returncode == 0, bounded.stderr[-2000:]
    assert float(bounded.stdout) == pytest.approx(math.sqrt(2), rel=1e-2)  # two independent N(0, 1) tensors
    whole_tensors = _bounded_run(base[1], tmp_path / "base", tmp_path / "tuned", BIG_ELEMENTS)  # the check can fail
    assert whole_tensors.returncode != 0 and "memory" in whole_tensors.stderr.lower(), whole_tensors.stderr[-2000:]
