"""The change a PEFT LoRA adapter makes to its base model, as if merged, ΔW = B·A·scale built block by block."""

from __future__ import annotations

import json
import math
import re
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sftlab.errors import SftlabError
from sftlab.spec.schema import WeightsConfig
from sftlab.weight_diff.checkpoint import (
    ADAPTER_CONFIG,
    ADAPTER_FILE,
    Checkpoint,
    TunedRows,
    file_tensors,
    matched,
    open_checkpoint,
)
from sftlab.weight_diff.low_rank import LowRank
from sftlab.weight_diff.measure import check_shapes, measure_all
from sftlab.weight_diff.names import natural_key
from sftlab.weight_diff.results import Spectrum, TensorDiff, WeightDiff
from sftlab.weight_diff.spectra import dense_spectrum, low_rank_spectrum, with_spectra

if TYPE_CHECKING:
    import torch

_PEFT_PREFIX = "base_model.model."
_LORA_KEY = re.compile(
    r"^(?P<module>.+)\.(?P<part>lora_A|lora_B|lora_embedding_A|lora_embedding_B)(?:\.(?P<param>weight|bias))?$"
)


def _pattern_value(patterns: dict[str, Any], module: str, default: Any) -> Any:
    """PEFT's ``rank_pattern``/``alpha_pattern`` lookup: a key matches a module-name suffix."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def _scale(config: dict[str, Any], module: str, rank: int) -> float:
    alpha = _pattern_value(config.get("alpha_pattern") or {}, module, config.get("lora_alpha", 8))
    return alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank


def _read_adapter_config(adapter_dir: Path) -> dict[str, Any]:
    path = adapter_dir / ADAPTER_CONFIG
    if not path.is_file() or not (adapter_dir / ADAPTER_FILE).is_file():
        raise SftlabError(f"LoRA adapter {adapter_dir}: expected {ADAPTER_CONFIG} and {ADAPTER_FILE}")
    config = json.loads(path.read_text())
    if config.get("peft_type", "LORA") != "LORA" or config.get("use_dora"):
        kind = "DoRA" if config.get("use_dora") else config.get("peft_type")
        raise SftlabError(f"LoRA adapter {adapter_dir}: {kind} adapters are not supported, only plain LoRA")
    return config


@dataclass
class _AdapterParts:
    """What an adapter changes, keyed by the base tensor it changes."""

    low_rank: dict[str, LowRank] = field(default_factory=dict)
    bias: dict[str, torch.Tensor] = field(default_factory=dict)  # lora_B bias (lora_bias=True) × scale
    replaced: dict[str, str] = field(default_factory=dict)  # full copies (modules_to_save) → adapter key

    @property
    def targets(self) -> set[str]:
        return set(self.low_rank) | set(self.bias) | set(self.replaced)


def _adapter_parts(adapter: Checkpoint, config: dict[str, Any]) -> _AdapterParts:
    """Group the adapter's tensors by the base tensor they change."""
    import torch

    parts = _AdapterParts()
    factors: dict[str, dict[str, str]] = {}
    for key in adapter.names:
        plain = key.removeprefix(_PEFT_PREFIX)
        found = _LORA_KEY.match(plain)
        if found is None:  # a trained full copy (modules_to_save) or a saved copy of a base layer
            parts.replaced[plain.replace(".base_layer.", ".")] = key
        else:
            part = "bias" if found["param"] == "bias" else found["part"][-1]
            factors.setdefault(found["module"], {})[part] = key
    for module, keys in factors.items():
        if not {"A", "B"} <= set(keys):
            raise SftlabError(f"LoRA adapter: module {module} lacks lora_{'B' if 'A' in keys else 'A'}")
        a, b = adapter.read_all(keys["A"], torch.float64), adapter.read_all(keys["B"], torch.float64)
        transposed = "embedding" in keys["A"] or bool(config.get("fan_in_fan_out"))
        low_rank = LowRank(a, b, _scale(config, module, a.shape[0]), transposed)
        parts.low_rank[f"{module}.weight"] = low_rank
        if "bias" in keys:
            parts.bias[f"{module}.bias"] = adapter.read_all(keys["bias"], torch.float64) * low_rank.scale
    return parts


def _lora_tuned_rows(name: str, adapter: Checkpoint, parts: _AdapterParts) -> TunedRows:
    """Rows of the merged tensor: (trained copy or base rows) + B·A·scale + LoRA bias."""
    replaced, low_rank, bias = parts.replaced.get(name), parts.low_rank.get(name), parts.bias.get(name)

    def rows_of(rows: slice, base_rows: torch.Tensor) -> torch.Tensor:
        tuned = adapter.read(replaced, rows) if replaced else base_rows
        if low_rank is not None:
            tuned = tuned + low_rank.rows(rows)
        if bias is not None:
            tuned = tuned + bias[rows]
        return tuned

    return rows_of


def compare_lora(base_dir: Path, adapter_dir: Path, config: WeightsConfig | None = None) -> WeightDiff:
    """Per-tensor change a PEFT LoRA adapter makes to its base model, as if merged (but never merged)."""
    config = config or WeightsConfig()
    adapter_dir = Path(adapter_dir)
    adapter_config = _read_adapter_config(adapter_dir)
    with open_checkpoint(base_dir, "base model") as base, ExitStack() as stack:
        adapter = Checkpoint(file_tensors(adapter_dir / ADAPTER_FILE), stack)
        parts = _adapter_parts(adapter, adapter_config)
        names = base.names | parts.targets
        in_base, unmatched = matched(names, base)
        if unmatched:
            first = min(unmatched, key=natural_key)
            raise SftlabError(f"LoRA adapter {adapter_dir}: {first} has no tensor in the base model")
        readers = {name: _lora_tuned_rows(name, adapter, parts) for name in names}
        ordered = sorted(names, key=natural_key)
        for name in ordered:
            _check_adapter_shape(name, base.shape(in_base[name]), parts, adapter)
        diffs = measure_all(ordered, base, in_base, readers)

        def spectrum_of(tensor: TensorDiff) -> Spectrum:
            low_rank = parts.low_rank.get(tensor.name)
            if low_rank is not None and tensor.name not in parts.replaced and tensor.name not in parts.bias:
                return low_rank_spectrum(low_rank, config.spectral_top_k, tensor.delta_norm)
            return dense_spectrum(tensor, base, in_base[tensor.name], readers[tensor.name], config)

        return with_spectra(diffs, config, spectrum_of)


def _check_adapter_shape(name: str, base_shape: tuple[int, ...], parts: _AdapterParts, adapter: Checkpoint) -> None:
    if name in parts.low_rank:
        check_shapes(name, base_shape, parts.low_rank[name].shape)
    if name in parts.replaced:
        check_shapes(name, base_shape, adapter.shape(parts.replaced[name]))
    if name in parts.bias:
        check_shapes(name, base_shape, tuple(parts.bias[name].shape))
