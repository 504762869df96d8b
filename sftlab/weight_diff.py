"""How far fine-tuning moved each weight tensor, streamed from safetensors files.

The study behind sftlab found that weight change in the *middle* layers correlates most with SFT
gains, so the change is measured per tensor and aggregated per layer, module type and depth third.
Checkpoints of 7-9B models do not fit comfortably in memory twice, so tensors are read in row
chunks through ``safe_open`` (memory ~ two chunks), and a LoRA adapter's ΔW = B·A·scale is built
chunk by chunk instead of merging a model. An optional spectral view (top singular values and
effective rank of ΔW) runs on a seeded sample of matrices after the streamed pass.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sftlab.errors import SftlabError
from sftlab.spec import WeightsConfig

if TYPE_CHECKING:
    import pandas
    import torch

INDEX_FILE = "model.safetensors.index.json"
ADAPTER_FILE = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
# Rows are read in blocks of ~256K elements (2 MB as float64), so the float64 passes over a block
# stay in CPU cache (2-core VM, page-cached float32 pair: 6 GB/s vs 0.9 GB/s with 4M-element blocks).
# The blocks are processed on one thread: on shared cores torch's intra-op threads waited on each
# other (11 ms vs 0.11 ms for one 2 MB dot product with another job running).
CHUNK_ELEMENTS = 1 << 18
# Spectral view: ΔW with a side at most this long gets an exact SVD (cheap); larger ones a
# randomized SVD (Halko et al. 2011) of rank top_k + SVD_OVERSAMPLE with SVD_NITER power iterations.
EXACT_SVD_MAX_DIM = 512
SVD_OVERSAMPLE = 8
SVD_NITER = 4
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
MODULE_TYPES = (*PROJECTIONS, "norm", "embed", "lm_head", "other")
DEPTHS = ("bottom", "middle", "top")

_LAYER = re.compile(r"(?:^|\.)(?:layers|h|blocks)\.(\d+)\.")  # Llama/Qwen/Mistral, GPT-2, others
_HEAD = re.compile(r"(?:^|\.)(?:lm_head|embed_out)\.weight$")
_EMBED = re.compile(r"(?:^|\.)(?:embed_tokens|wte|word_embeddings|embed_in)\.weight$")
_PEFT_PREFIX = "base_model.model."
_LORA_KEY = re.compile(
    r"^(?P<module>.+)\.(?P<part>lora_A|lora_B|lora_embedding_A|lora_embedding_B)(?:\.(?P<param>weight|bias))?$"
)

# Reads rows ``rows`` of the tuned tensor (any float dtype), given the same rows of the base tensor as stored.
TunedRows = Callable[[slice, "torch.Tensor"], "torch.Tensor"]


def layer_index(name: str) -> int | None:
    """The transformer block a tensor belongs to (``model.layers.<i>.``), None outside blocks."""
    found = _LAYER.search(name)
    return int(found.group(1)) if found else None


def module_type(name: str) -> str:
    """The module family a tensor belongs to, so changes can be compared across layers."""
    parts = name.split(".")
    if _HEAD.search(name):
        return "lm_head"
    if "embed" in name:
        return "embed"
    for kind in PROJECTIONS:
        if kind in parts:
            return kind
    return "norm" if any("norm" in p or p.startswith("ln") for p in parts) else "other"


def depth_bucket(layer: int, num_layers: int) -> str:
    """Bottom, middle or top third of the stack (sizes as equal as possible)."""
    return DEPTHS[min(2, layer * 3 // num_layers)]


def _natural_key(name: str) -> list[tuple[int, Any]]:
    """Sort ``layers.10`` after ``layers.9``."""
    return [(0, int(p)) if p.isdigit() else (1, p) for p in name.split(".")]


def _ratio(num: float, den: float) -> float:
    if den > 0:
        return num / den
    return 0.0 if num == 0 else math.inf


# ---------------------------------------------------------------------------------------------
# Results


def _cosine(dot: float, base_norm: float, tuned_norm: float, delta_norm: float) -> float:
    """cos(W_ft, W_base); 1 for two identical all-zero tensors."""
    if base_norm == 0 or tuned_norm == 0:
        return 1.0 if delta_norm == 0 else 0.0
    return dot / (base_norm * tuned_norm)


@dataclass(frozen=True)
class Spectrum:
    """Leading singular values of ΔW and its effective rank (Roy & Vetterli 2007).

    ``exact`` is False for a randomized SVD of a large matrix: the effective rank is then that of
    the top ``top_k + SVD_OVERSAMPLE`` values, a lower bound on the full matrix's.
    """

    singular_values: tuple[float, ...]  # top k, descending
    effective_rank: float
    top_k_energy: float  # Σ top-k σ² / ||ΔW||²: near 1 when the update is low-rank
    exact: bool


def effective_rank(singular_values: torch.Tensor) -> float:
    """exp(entropy of σ/Σσ) (Roy & Vetterli 2007): 1 for rank one, n for n equal values."""
    sigma = singular_values.double().clamp_min(0)
    total = float(sigma.sum())
    if total == 0:
        return 0.0
    p = sigma[sigma > 0] / total
    return math.exp(-float((p * p.log()).sum()))


class _NormRatios:
    """Relative change and cosine from the norms and dot product a tensor or group carries."""

    base_norm: float
    tuned_norm: float
    delta_norm: float
    dot: float

    @property
    def rel_change(self) -> float:
        return _ratio(self.delta_norm, self.base_norm)

    @property
    def cosine(self) -> float:
        return _cosine(self.dot, self.base_norm, self.tuned_norm, self.delta_norm)


@dataclass(frozen=True)
class TensorDiff(_NormRatios):
    """Change of one tensor; norms are Frobenius norms over the whole tensor."""

    name: str
    shape: tuple[int, ...]
    base_norm: float
    tuned_norm: float
    delta_norm: float
    dot: float
    max_abs_delta: float
    tied_to: str | None = None  # the base tensor compared against, when weight tying hid this one
    spectrum: Spectrum | None = None


    @property
    def layer(self) -> int | None:
        return layer_index(self.name)

    @property
    def module(self) -> str:
        return module_type(self.name)

    def row(self) -> dict[str, Any]:
        """One JSON-able table row; spectral columns are None for matrices outside the sample."""
        spectrum = self.spectrum
        return {
            **{k: v for k, v in asdict(self).items() if k not in ("dot", "spectrum")},
            "shape": list(self.shape),
            "layer": self.layer,
            "module": self.module,
            "rel_change": self.rel_change,
            "cosine": self.cosine,
            "top_singular_values": list(spectrum.singular_values) if spectrum else None,
            "effective_rank": spectrum.effective_rank if spectrum else None,
            "top_k_energy": spectrum.top_k_energy if spectrum else None,
            "spectrum_exact": spectrum.exact if spectrum else None,
        }


@dataclass(frozen=True)
class GroupChange(_NormRatios):
    """The change of a group of tensors taken as one long vector, so big tensors weigh more."""

    base_norm: float
    tuned_norm: float
    delta_norm: float
    dot: float
    max_abs_delta: float

    @classmethod
    def of(cls, tensors: Iterable[TensorDiff]) -> GroupChange:
        items = list(tensors)
        return cls(
            base_norm=math.sqrt(sum(t.base_norm**2 for t in items)),
            tuned_norm=math.sqrt(sum(t.tuned_norm**2 for t in items)),
            delta_norm=math.sqrt(sum(t.delta_norm**2 for t in items)),
            dot=sum(t.dot for t in items),
            max_abs_delta=max((t.max_abs_delta for t in items), default=0.0),
        )


    def measures(self, names: Iterable[str]) -> dict[str, float]:
        """The named measures: rel_change, abs_change (||ΔW||), cosine, max_abs_change."""
        values = {
            "rel_change": self.rel_change,
            "abs_change": self.delta_norm,
            "cosine": self.cosine,
            "max_abs_change": self.max_abs_delta,
        }
        return {name: values[name] for name in names}


# Which measures each aggregate logs as MLflow metrics: every module and the total get all four,
# layers and depth thirds only the headline ones, so a 80-layer model stays near 150 metrics (the
# MLflow UI slows past ~1,000 per run); everything per tensor goes to the table artifact.
ALL_MEASURES = ("rel_change", "abs_change", "cosine", "max_abs_change")
LAYER_MEASURES = ("rel_change",)
DEPTH_MEASURES = ("rel_change", "abs_change")


@dataclass
class WeightDiff:
    """Per-tensor changes plus the aggregates the report correlates with gains."""

    tensors: list[TensorDiff] = field(default_factory=list)

    @property
    def num_layers(self) -> int:
        layers = [t.layer for t in self.tensors if t.layer is not None]
        return max(layers) + 1 if layers else 0

    def _grouped(self, key: Callable[[TensorDiff], Any]) -> dict[Any, GroupChange]:
        """Change of each group of tensors; tensors whose key is None are left out."""
        groups: dict[Any, list[TensorDiff]] = {}
        for tensor in self.tensors:
            group = key(tensor)
            if group is not None:
                groups.setdefault(group, []).append(tensor)
        return {group: GroupChange.of(items) for group, items in groups.items()}

    def by_layer(self) -> dict[int, GroupChange]:
        return dict(sorted(self._grouped(lambda t: t.layer).items()))

    def by_module(self) -> dict[str, GroupChange]:
        found = self._grouped(lambda t: t.module)
        return {m: found[m] for m in MODULE_TYPES if m in found}

    def by_depth(self) -> dict[str, GroupChange]:
        n = self.num_layers
        found = self._grouped(lambda t: None if t.layer is None else depth_bucket(t.layer, n))
        return {d: found[d] for d in DEPTHS if d in found}

    def by_layer_and_module(self) -> dict[tuple[int, str], GroupChange]:
        return self._grouped(lambda t: None if t.layer is None else (t.layer, t.module))

    def total(self) -> GroupChange:
        return GroupChange.of(self.tensors)

    def spectra(self) -> list[TensorDiff]:
        return [t for t in self.tensors if t.spectrum is not None]

    def metrics(self) -> dict[str, float]:
        """MLflow metrics; infinite ratios (all-zero base groups) are left out, MLflow and ranks can't use them."""
        named: dict[str, float] = {}
        groups: list[tuple[str, dict[Any, GroupChange], tuple[str, ...]]] = [
            ("layer_", self.by_layer(), LAYER_MEASURES),
            ("module_", self.by_module(), ALL_MEASURES),
            ("depth_", self.by_depth(), DEPTH_MEASURES),
            ("", {"total": self.total()}, ALL_MEASURES),
        ]
        for prefix, grouped, measures in groups:
            for group, change in grouped.items():
                named.update({f"weights/{prefix}{group}/{k}": v for k, v in change.measures(measures).items()})
        named.update(self._spectral_metrics())
        return {k: v for k, v in named.items() if math.isfinite(v)}

    def _spectral_metrics(self) -> dict[str, float]:
        spectra = [t.spectrum for t in self.spectra() if t.spectrum is not None]
        if not spectra:
            return {}
        return {
            "weights/spectral/matrices": float(len(spectra)),
            "weights/spectral/effective_rank_mean": sum(s.effective_rank for s in spectra) / len(spectra),
            "weights/spectral/top_k_energy_mean": sum(s.top_k_energy for s in spectra) / len(spectra),
            "weights/spectral/top_singular_value_max": max(s.singular_values[0] for s in spectra),
        }

    def rows(self) -> list[dict[str, Any]]:
        """One JSON-able row per tensor, for a per-tensor artifact table."""
        return [t.row() for t in self.tensors]

    def table(self) -> pandas.DataFrame:
        """The per-tensor rows as a DataFrame (written as Parquet and as an MLflow table)."""
        import pandas as pd

        return pd.DataFrame(self.rows(), columns=list(TensorDiff("", (), 0, 0, 0, 0, 0).row()))

    def heatmap_png(self, path: str | Path) -> Path:
        """Layer × module relative-change heatmap, to see at a glance where training moved weights."""
        from matplotlib.figure import Figure

        cells = {key: change.rel_change for key, change in self.by_layer_and_module().items()}
        layers = sorted({layer for layer, _ in cells})
        present = {module for _, module in cells}
        modules = [m for m in MODULE_TYPES if m in present]
        grid = [[cells.get((layer, m), math.nan) for m in modules] for layer in layers] or [[math.nan]]
        fig = Figure(figsize=(1.2 + 0.8 * max(1, len(modules)), 1.5 + 0.35 * max(1, len(layers))))
        ax = fig.add_subplot()
        image = ax.imshow(grid, aspect="auto", cmap="viridis", origin="lower")
        ax.set_xticks(range(len(modules)), modules, rotation=45, ha="right")
        ax.set_yticks(range(len(layers)), [str(layer) for layer in layers])
        ax.set_xlabel("module")
        ax.set_ylabel("layer")
        ax.set_title("relative weight change ||ΔW|| / ||W||")
        fig.colorbar(image, ax=ax)
        fig.tight_layout()
        out = Path(path)
        fig.savefig(out, format="png", dpi=100)
        return out


# ---------------------------------------------------------------------------------------------
# Reading safetensors folders


class _Checkpoint:
    """Tensor name → open safetensors file of one folder; tensors are read by row ranges."""

    def __init__(self, files: dict[str, Path], stack: ExitStack):
        opened = {path: stack.enter_context(_safe_open(path)) for path in set(files.values())}
        self._handles = {name: opened[path] for name, path in files.items()}

    @property
    def names(self) -> set[str]:
        return set(self._handles)

    def __contains__(self, name: str) -> bool:
        return name in self._handles

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._handles[name].get_slice(name).get_shape())

    def read(self, name: str, rows: slice, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Rows ``rows`` of a tensor, as stored or as ``dtype`` (a 0-d tensor is read whole, as one row).

        The result may be a read-only view of the memory-mapped file: never modify it in place.
        """
        handle = self._handles[name]
        if not self.shape(name):
            block = handle.get_tensor(name).reshape(1)
        else:
            block = handle.get_slice(name)[rows]
        return block if dtype is None else block.to(dtype)

    def read_all(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        return self.read(name, slice(None), dtype)


def _weight_files(folder: Path, role: str) -> dict[str, Path]:
    """Tensor name → file, from the shard index if there is one, else every model .safetensors file."""
    index = folder / INDEX_FILE
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {name: folder / file for name, file in weight_map.items()}
    files = sorted(p for p in folder.glob("*.safetensors") if p.name != ADAPTER_FILE) if folder.is_dir() else []
    if not files:
        hint = "; it holds a LoRA adapter, compare it with compare_lora" if (folder / ADAPTER_CONFIG).is_file() else ""
        raise SftlabError(f"{role} {folder}: no safetensors weights (model.safetensors or {INDEX_FILE}){hint}")
    found: dict[str, Path] = {}
    for path in files:
        found.update(_file_tensors(path))
    return found


def _safe_open(path: Path) -> Any:
    """``safe_open`` (memory-mapped, nothing read yet) with a one-line error for missing or corrupt files."""
    from safetensors import SafetensorError, safe_open

    try:
        return safe_open(str(path), framework="pt")
    except (OSError, SafetensorError) as exc:
        raise SftlabError(f"{path}: cannot read safetensors weights: {str(exc).splitlines()[0]}") from exc


def _file_tensors(path: Path) -> dict[str, Path]:
    """Tensor name → ``path`` for every tensor stored in one safetensors file."""
    with _safe_open(path) as handle:
        return dict.fromkeys(handle.keys(), path)


@contextmanager
def _open(folder: Path, role: str) -> Iterator[_Checkpoint]:
    with ExitStack() as stack:
        yield _Checkpoint(_weight_files(Path(folder), role), stack)


@contextmanager
def _one_thread() -> Iterator[None]:
    """Run torch ops single-threaded (see CHUNK_ELEMENTS), restoring the caller's setting."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _tied_partner(name: str, present: Iterable[str]) -> str | None:
    """The tensor a tied output head shares with the input embedding (or vice versa), if present."""
    wanted = _EMBED if _HEAD.search(name) else _HEAD if _EMBED.search(name) else None
    if wanted is None:
        return None
    found = [n for n in present if wanted.search(n)]
    return found[0] if len(found) == 1 else None


def _matched(names: Iterable[str], side: _Checkpoint) -> tuple[dict[str, str], list[str]]:
    """Each name's tensor on ``side`` (itself, or its partner through weight tying), and the names it lacks."""
    resolved: dict[str, str] = {}
    missing: list[str] = []
    for name in names:
        found = name if name in side else _tied_partner(name, side.names)
        if found is None:
            missing.append(name)
        else:
            resolved[name] = found
    return resolved, missing


def _rows_of(side: _Checkpoint, name: str) -> TunedRows:
    """Tuned rows read straight from a full checkpoint (the base rows are not needed)."""
    return lambda rows, _base_rows: side.read(name, rows)


def _row_size(shape: tuple[int, ...]) -> int:
    return math.prod(shape[1:]) if len(shape) > 1 else 1


def _row_step(shape: tuple[int, ...]) -> int:
    """Rows per block: as many as fit CHUNK_ELEMENTS, at least one."""
    return max(1, CHUNK_ELEMENTS // max(1, _row_size(shape)))


def _row_slices(shape: tuple[int, ...]) -> Iterator[slice]:
    rows = shape[0] if shape else 1
    step = _row_step(shape)
    for start in range(0, rows, step):
        yield slice(start, min(rows, start + step))


def _measure(name: str, base: _Checkpoint, base_name: str, tuned_rows: TunedRows) -> TensorDiff:
    """Stream one tensor pair block by block, accumulating the sums every statistic needs.

    Each block goes into one reused float64 buffer as rows [W_base; ΔW], whose 2×2 Gram matrix
    (one BLAS call) gives Σb², Σb·d and Σd²; then Σt² = Σb² + 2Σb·d + Σd² and Σb·t = Σb² + Σb·d.
    float64 keeps 1 - cos ~ 1e-6 fine-tunes exact; the blocks stay in CPU cache.
    """
    import torch

    shape = base.shape(base_name)
    rows = shape[0] if shape else 1
    buffer = torch.empty(2, min(rows, _row_step(shape)) * _row_size(shape), dtype=torch.float64)
    gram = torch.zeros(2, 2, dtype=torch.float64)
    max_abs = 0.0
    for rows_slice in _row_slices(shape):
        block = base.read(base_name, rows_slice)
        pair = buffer[:, : block.numel()]
        pair[0].copy_(block.reshape(-1))
        pair[1].copy_(tuned_rows(rows_slice, block).reshape(-1))
        pair[1].sub_(pair[0])
        gram += pair @ pair.T
        if pair.shape[1]:
            low, high = torch.aminmax(pair[1])
            max_abs = max(max_abs, float(high), -float(low))
    (base_sq, base_delta), (_, delta_sq) = gram.tolist()
    return TensorDiff(
        name=name,
        shape=shape,
        base_norm=math.sqrt(base_sq),
        tuned_norm=math.sqrt(max(0.0, base_sq + 2 * base_delta + delta_sq)),
        delta_norm=math.sqrt(delta_sq),
        dot=base_sq + base_delta,
        max_abs_delta=max_abs,
        tied_to=base_name if base_name != name else None,
    )


def _measure_all(names: list[str], base: _Checkpoint, in_base: dict[str, str], readers: dict[str, TunedRows]) -> list[TensorDiff]:
    """Every tensor's change, in the order given, on one thread (see CHUNK_ELEMENTS)."""
    with _one_thread():
        return [_measure(name, base, in_base[name], readers[name]) for name in names]


def _mismatch(only_base: list[str], only_tuned: list[str]) -> SftlabError:
    def describe(names: list[str], other: str) -> str:
        if not names:
            return f"no tensors the {other} lacks"
        return f"{len(names)} tensor(s) the {other} lacks (e.g. {min(names, key=_natural_key)})"

    return SftlabError(
        f"architecture mismatch: base has {describe(only_base, 'fine-tuned model')}, "
        f"fine-tuned has {describe(only_tuned, 'base')}"
    )


def _check_shapes(name: str, base_shape: tuple[int, ...], tuned_shape: tuple[int, ...]) -> None:
    if base_shape != tuned_shape:
        raise SftlabError(f"shape mismatch for {name}: base {list(base_shape)}, fine-tuned {list(tuned_shape)}")


def compare_checkpoints(base_dir: Path, tuned_dir: Path, config: WeightsConfig | None = None) -> WeightDiff:
    """Per-tensor change between two full checkpoints (sharded or not), matched by tensor name."""
    config = config or WeightsConfig()
    with _open(base_dir, "base model") as base, _open(tuned_dir, "fine-tuned model") as tuned:
        names = base.names | tuned.names
        in_base, only_tuned = _matched(names, base)
        in_tuned, only_base = _matched(names, tuned)
        if only_base or only_tuned:
            raise _mismatch(only_base, only_tuned)
        readers = {name: _rows_of(tuned, in_tuned[name]) for name in names}
        ordered = sorted(names, key=_natural_key)  # layers.2 before layers.10; first mismatch reported
        for name in ordered:
            _check_shapes(name, base.shape(in_base[name]), tuned.shape(in_tuned[name]))
        diffs = _measure_all(ordered, base, in_base, readers)
        return _with_spectra(diffs, config, lambda t: _dense_spectrum(t, base, in_base[t.name], readers[t.name], config))


# ---------------------------------------------------------------------------------------------
# Spectral view (optional)


def _with_spectra(diffs: list[TensorDiff], config: WeightsConfig, spectrum_of: Callable[[TensorDiff], Spectrum]) -> WeightDiff:
    """Add spectra to a seeded sample of the changed 2-D matrices (all of them if there are few)."""
    if not config.spectral:
        return WeightDiff(diffs)
    candidates = [t.name for t in diffs if len(t.shape) == 2 and t.delta_norm > 0]
    chosen = set(random.Random(config.seed).sample(candidates, min(config.spectral_max_matrices, len(candidates))))
    return WeightDiff([replace(t, spectrum=spectrum_of(t)) if t.name in chosen else t for t in diffs])


def _dense_spectrum(
    tensor: TensorDiff, base: _Checkpoint, base_name: str, tuned_rows: TunedRows, config: WeightsConfig
) -> Spectrum:
    """Spectrum of a materialised float32 ΔW: the one place a whole matrix (two, briefly) is in memory."""
    import torch

    base_matrix = base.read_all(base_name, torch.float32)
    delta = tuned_rows(slice(None), base_matrix).to(torch.float32) - base_matrix  # reads may be views: no in-place
    del base_matrix
    return matrix_spectrum(delta, config.spectral_top_k, config.seed, tensor.delta_norm)


def matrix_spectrum(delta: torch.Tensor, top_k: int, seed: int, frobenius: float | None = None) -> Spectrum:
    """Top-k singular values and effective rank of a 2-D ΔW.

    Exact (``svdvals``) when a side is at most EXACT_SVD_MAX_DIM long; otherwise a seeded
    randomized SVD (``torch.svd_lowrank``), whose cost grows with top_k, not with the rank.
    """
    import torch

    rows, cols = delta.shape
    if min(rows, cols) <= EXACT_SVD_MAX_DIM:
        return _spectrum(torch.linalg.svdvals(delta.double()), top_k, frobenius, exact=True)
    rank = min(top_k + SVD_OVERSAMPLE, rows, cols)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        _, sigma, _ = torch.svd_lowrank(delta, q=rank, niter=SVD_NITER)
    return _spectrum(sigma, top_k, frobenius, exact=rank == min(rows, cols))


def _low_rank_spectrum(low_rank: _LowRank, top_k: int, frobenius: float) -> Spectrum:
    """Exact spectrum of B·A·scale from an r×r core: B = Q_b R_b, Aᵀ = Q_a R_a ⇒ σ(BA) = σ(R_b R_aᵀ)."""
    import torch

    r_b = torch.linalg.qr(low_rank.b).R
    r_a = torch.linalg.qr(low_rank.a.T).R
    return _spectrum(torch.linalg.svdvals(r_b @ r_a.T) * abs(low_rank.scale), top_k, frobenius, exact=True)


def _spectrum(sigma: torch.Tensor, top_k: int, frobenius: float | None, exact: bool) -> Spectrum:
    sigma = sigma.double().sort(descending=True).values
    top = sigma[:top_k]
    total_sq = frobenius**2 if frobenius is not None else float((sigma * sigma).sum())
    energy = min(1.0, float((top * top).sum()) / total_sq) if total_sq > 0 else 0.0
    return Spectrum(tuple(float(x) for x in top), effective_rank(sigma), energy, exact)


# ---------------------------------------------------------------------------------------------
# LoRA adapters


@dataclass
class _LowRank:
    """ΔW = B·A·scale of one adapted module, computed for a block of rows at a time."""

    a: torch.Tensor  # (r, in) — or (r, num_embeddings) for embeddings
    b: torch.Tensor  # (out, r)
    scale: float
    transposed: bool  # embeddings and fan_in_fan_out layers store ΔW transposed

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.a.shape[1], self.b.shape[0]) if self.transposed else (self.b.shape[0], self.a.shape[1])

    def rows(self, rows: slice) -> torch.Tensor:
        """ΔW rows ``rows`` (float64, as the factors are read)."""
        if self.transposed:
            return (self.a[:, rows].T @ self.b.T) * self.scale
        return (self.b[rows] @ self.a) * self.scale


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

    low_rank: dict[str, _LowRank] = field(default_factory=dict)
    bias: dict[str, torch.Tensor] = field(default_factory=dict)  # lora_B bias (lora_bias=True) × scale
    replaced: dict[str, str] = field(default_factory=dict)  # full copies (modules_to_save) → adapter key

    @property
    def targets(self) -> set[str]:
        return set(self.low_rank) | set(self.bias) | set(self.replaced)


def _adapter_parts(adapter: _Checkpoint, config: dict[str, Any]) -> _AdapterParts:
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
        low_rank = _LowRank(a, b, _scale(config, module, a.shape[0]), transposed)
        parts.low_rank[f"{module}.weight"] = low_rank
        if "bias" in keys:
            parts.bias[f"{module}.bias"] = adapter.read_all(keys["bias"], torch.float64) * low_rank.scale
    return parts


def _lora_tuned_rows(name: str, adapter: _Checkpoint, parts: _AdapterParts) -> TunedRows:
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
    with _open(base_dir, "base model") as base, ExitStack() as stack:
        adapter = _Checkpoint(_file_tensors(adapter_dir / ADAPTER_FILE), stack)
        parts = _adapter_parts(adapter, adapter_config)
        names = base.names | parts.targets
        in_base, unmatched = _matched(names, base)
        if unmatched:
            first = min(unmatched, key=_natural_key)
            raise SftlabError(f"LoRA adapter {adapter_dir}: {first} has no tensor in the base model")
        readers = {name: _lora_tuned_rows(name, adapter, parts) for name in names}
        ordered = sorted(names, key=_natural_key)
        for name in ordered:
            _check_adapter_shape(name, base.shape(in_base[name]), parts, adapter)
        diffs = _measure_all(ordered, base, in_base, readers)

        def spectrum_of(tensor: TensorDiff) -> Spectrum:
            low_rank = parts.low_rank.get(tensor.name)
            if low_rank is not None and tensor.name not in parts.replaced and tensor.name not in parts.bias:
                return _low_rank_spectrum(low_rank, config.spectral_top_k, tensor.delta_norm)
            return _dense_spectrum(tensor, base, in_base[tensor.name], readers[tensor.name], config)

        return _with_spectra(diffs, config, spectrum_of)


def _check_adapter_shape(name: str, base_shape: tuple[int, ...], parts: _AdapterParts, adapter: _Checkpoint) -> None:
    if name in parts.low_rank:
        _check_shapes(name, base_shape, parts.low_rank[name].shape)
    if name in parts.replaced:
        _check_shapes(name, base_shape, adapter.shape(parts.replaced[name]))
    if name in parts.bias:
        _check_shapes(name, base_shape, tuple(parts.bias[name].shape))
