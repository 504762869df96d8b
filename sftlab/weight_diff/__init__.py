"""How far fine-tuning moved each weight tensor, streamed from safetensors files.

The study behind sftlab found that weight change in the *middle* layers correlates most with SFT
gains, so the change is measured per tensor and aggregated per layer, module type and depth third.
Checkpoints of 7-9B models do not fit comfortably in memory twice, so tensors are read in row
chunks through ``safe_open`` (memory ~ two chunks), and a LoRA adapter's ΔW = B·A·scale is built
chunk by chunk instead of merging a model. An optional spectral view (top singular values and
effective rank of ΔW) runs on a seeded sample of matrices after the streamed pass.
"""

from sftlab.weight_diff.checkpoint import ADAPTER_CONFIG, ADAPTER_FILE, INDEX_FILE
from sftlab.weight_diff.lora import compare_lora
from sftlab.weight_diff.measure import compare_checkpoints
from sftlab.weight_diff.names import DEPTHS, MODULE_TYPES, depth_bucket, layer_index, module_type
from sftlab.weight_diff.results import GroupChange, Spectrum, TensorDiff, WeightDiff
from sftlab.weight_diff.spectra import effective_rank, matrix_spectrum

__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_FILE",
    "DEPTHS",
    "INDEX_FILE",
    "MODULE_TYPES",
    "GroupChange",
    "Spectrum",
    "TensorDiff",
    "WeightDiff",
    "compare_checkpoints",
    "compare_lora",
    "depth_bucket",
    "effective_rank",
    "layer_index",
    "matrix_spectrum",
    "module_type",
]
