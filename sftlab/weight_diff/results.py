"""The measured change: per tensor, per group of tensors, and a model's metrics, table and heatmap."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sftlab import metric_names
from sftlab.weight_diff.names import DEPTHS, MODULE_TYPES, depth_bucket, layer_index, module_type

if TYPE_CHECKING:
    import pandas


def _ratio(num: float, den: float) -> float:
    if den > 0:
        return num / den
    return 0.0 if num == 0 else math.inf


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
        groups: list[tuple[Callable[[Any, str], str], dict[Any, GroupChange], tuple[str, ...]]] = [
            (metric_names.weights_layer, self.by_layer(), LAYER_MEASURES),
            (metric_names.weights_module, self.by_module(), ALL_MEASURES),
            (metric_names.weights_depth, self.by_depth(), DEPTH_MEASURES),
            (lambda _, stat: metric_names.weights_total(stat), {"total": self.total()}, ALL_MEASURES),
        ]
        for name, grouped, measures in groups:
            for group, change in grouped.items():
                named.update({name(group, k): v for k, v in change.measures(measures).items()})
        named.update(self._spectral_metrics())
        return {k: v for k, v in named.items() if math.isfinite(v)}

    def _spectral_metrics(self) -> dict[str, float]:
        spectra = [t.spectrum for t in self.spectra() if t.spectrum is not None]
        if not spectra:
            return {}
        return {
            metric_names.weights_spectral("matrices"): float(len(spectra)),
            metric_names.weights_spectral("effective_rank_mean"): sum(s.effective_rank for s in spectra) / len(spectra),
            metric_names.weights_spectral("top_k_energy_mean"): sum(s.top_k_energy for s in spectra) / len(spectra),
            metric_names.weights_spectral("top_singular_value_max"): max(s.singular_values[0] for s in spectra),
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
