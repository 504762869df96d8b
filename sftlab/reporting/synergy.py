"""Task synergy (the study's finding 3): which training data helps which benchmark, for which base models.

Rule, stated in the report: the effect of dataset d on benchmark metric b for base model m is the
sign of the mean gain of (m, d)'s trials on b when that mean differs from 0 after multiple-testing
control (a t test over the trials, or with one trial its paired-bootstrap CI over items; then
Benjamini–Hochberg over every cell of the matrix at 5%), else none. Over the base models that
trained on d: *universal* when every one has the same significant sign (two models at least),
*model-specific* when some have a significant effect and others none or the opposite one, *no
effect* when none has. Without the FDR control, a 12-model × 10-dataset × 10-benchmark study
would flag some sixty null cells by chance, each one a false "model-specific" synergy.

``analyse`` computes the cells, their q-values and the classes (``Synergy``, ``.frame`` and
``.class_frame`` as DataFrames); ``render`` words, tabulates and draws them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from sftlab.reporting.content import MAX_PANELS, Options, Section, Table, ci_fields, png, subplots
from sftlab.reporting.trials import Measure, TrialRow, headlines
from sftlab.stats import MeanCI, alpha, bh, mean_ci, t_test_p

if TYPE_CHECKING:
    import pandas as pd

UNIVERSAL_UP, UNIVERSAL_DOWN = "universal +", "universal −"
SPECIFIC, NONE, ONE_MODEL = "model-specific", "no effect", "one base model"
CLASSES = (UNIVERSAL_UP, UNIVERSAL_DOWN, SPECIFIC, NONE, ONE_MODEL)
Cell = tuple[str, str, str]  # base model, dataset, measure name
ANNOTATE_ALL = 120  # heatmap cells per panel up to which every value is printed; above, effects get a marker


def rule(confidence: float) -> str:
    """The rule as the report states it, at the report's confidence level."""
    return (
        "Rule: the effect of dataset d on benchmark metric b for base model m is the sign of the mean gain of "
        "(m, d)'s trials on b when it differs from 0: a t test over the cell's trials (with a single trial, the "
        "normal test implied by its paired-bootstrap CI over items; no CI, no effect), then Benjamini–Hochberg over "
        f"all cells of the matrix, q < {alpha(confidence):g}. Universal: every base model that trained on d (at least "
        "two) has the same significant sign. Model-specific: some have a significant effect and others none or the "
        f"opposite sign. No effect: none has. Brackets show each cell's unadjusted {confidence:.0%} CI."
    )


@dataclass(frozen=True)
class CellGain:
    """A cell's mean gain, its unadjusted CI, its test and (once adjusted) its q-value."""

    ci: MeanCI
    p: float
    confidence: float  # the CI's coverage; 1 - it is the level q is tested at
    q: float = math.nan

    @property
    def sign(self) -> int:
        return (1 if self.ci.mean > 0 else -1) if self.q < alpha(self.confidence) else 0


def cell_gain(rows: list[TrialRow], measure: Measure, confidence: float) -> CellGain | None:
    """Mean gain of a cell's trials, its CI and the p-value of "mean gain = 0" (see the module rule)."""
    from scipy.stats import norm

    gains = [g for r in rows if (g := measure.gain(r)) is not None]
    if len(gains) == 1:
        row = next(r for r in rows if measure.gain(r) is not None)
        bounds = measure.ci(row)
        if bounds is None or not bounds[1] > bounds[0]:
            return CellGain(MeanCI(gains[0], math.nan, math.nan, 1), math.nan, confidence)
        se = (bounds[1] - bounds[0]) / (2 * norm.ppf(1 - alpha(confidence) / 2))
        return CellGain(MeanCI(gains[0], *bounds, 1), float(2 * norm.sf(abs(gains[0]) / se)), confidence)
    ci = mean_ci(gains, confidence)
    if ci is None:
        return None
    return CellGain(ci, t_test_p(gains), confidence)


def classify(signs: list[int]) -> str:
    """The class of one (dataset, metric) from its per-model effect signs (+1, -1, 0)."""
    if len(signs) < 2:
        return ONE_MODEL
    if all(s == 1 for s in signs):
        return UNIVERSAL_UP
    if all(s == -1 for s in signs):
        return UNIVERSAL_DOWN
    return SPECIFIC if any(signs) else NONE


def synergy_cells(done: list[TrialRow], measures: list[Measure], confidence: float) -> dict[Cell, CellGain]:
    """Every (base model, dataset, measure) cell with its BH q-value over the whole matrix."""
    groups: dict[tuple[str, str], list[TrialRow]] = {}
    for row in done:
        groups.setdefault((row.tag("base_model"), row.tag("dataset")), []).append(row)
    cells = {}
    for (model, dataset), members in groups.items():
        for m in measures:
            if (found := cell_gain(members, m, confidence)) is not None:
                cells[model, dataset, m.name] = found
    tested = [k for k, c in cells.items() if math.isfinite(c.p)]
    for key, q in zip(tested, bh([cells[k].p for k in tested]), strict=True):
        cells[key] = replace(cells[key], q=q)
    return cells


def classes(cells: dict[Cell, CellGain]) -> dict[tuple[str, str], tuple[str, dict[str, int]]]:
    """(dataset, measure) -> (class, sign per base model)."""
    signs: dict[tuple[str, str], dict[str, int]] = {}
    for (model, dataset, measure), cell in cells.items():
        signs.setdefault((dataset, measure), {})[model] = cell.sign
    return {key: (classify(list(per.values())), per) for key, per in signs.items()}


@dataclass
class Synergy:
    """Every cell's mean gain and test, and each (dataset, measure)'s class (see the module rule)."""

    measures: list[Measure]
    confidence: float
    cells: dict[Cell, CellGain]
    verdicts: dict[tuple[str, str], tuple[str, dict[str, int]]]  # (dataset, measure) -> (class, sign per model)

    @property
    def frame(self) -> pd.DataFrame:
        """One row per (base model, dataset, measure) cell (tables/synergy)."""
        import pandas as pd

        return pd.DataFrame.from_records(
            [
                {"base_model": mo, "dataset": d, "measure": me, **ci_fields(c.ci), "p": c.p, "q": c.q, "effect": c.sign}
                for (mo, d, me), c in sorted(self.cells.items())
            ]
        )

    @property
    def class_frame(self) -> pd.DataFrame:
        """One row per (dataset, measure): its class and each base model's effect (tables/synergy_classes)."""
        import pandas as pd

        return pd.DataFrame.from_records(
            [
                {"dataset": d, "measure": me, "class": cls, **{f"effect[{mo}]": s for mo, s in per.items()}}
                for (d, me), (cls, per) in sorted(self.verdicts.items())
            ]
        )


def analyse(done: list[TrialRow], measures: list[Measure], options: Options) -> Synergy:
    cells = synergy_cells(done, measures, options.confidence)
    return Synergy(measures, options.confidence, cells, classes(cells))


def render(result: Synergy) -> Section:
    cells, verdicts, measures, confidence = result.cells, result.verdicts, result.measures, result.confidence
    models = sorted({c[0] for c in cells})
    datasets = sorted({c[1] for c in cells})
    section = Section("Task synergy: dataset × benchmark", [rule(confidence)])
    counts = {name: sum(v[0] == name for v in verdicts.values()) for name in CLASSES}
    section.text.append(
        "Classes over all dataset × benchmark-metric cells: "
        + ", ".join(f"{k}: {v}" for k, v in counts.items() if v)
        + "."
    )
    for kind in (UNIVERSAL_UP, UNIVERSAL_DOWN, SPECIFIC):
        found = sorted(k for k, v in verdicts.items() if v[0] == kind)
        if found:
            listed = "; ".join(_describe(d, m, verdicts[d, m][1], kind == SPECIFIC) for d, m in found[:20])
            more = f" (and {len(found) - 20} more in tables/synergy_classes.csv)" if len(found) > 20 else ""
            section.text.append(f"{kind}: {listed}{more}.")
    table = [[d, *(verdicts[d, m.name][0] if (d, m.name) in verdicts else "–" for m in measures)] for d in datasets]
    section.tables.append(
        Table(["dataset (all base models)", *(m.name for m in measures)], table, caption="Class of each cell")
    )
    for model in models:
        rows = [[d, *(_cell_text(cells.get((model, d, m.name))) for m in measures)] for d in datasets]
        section.tables.append(
            Table(
                [f"dataset ({model})", *(m.name for m in measures)],
                rows,
                in_markdown=False,
                caption=f"Mean gain [CI] and q, base model {model}; +/− marks an effect",
                collapsed=len(models) > 3,
            )
        )
    shown = headlines(measures)[: MAX_PANELS * 2]
    if models and datasets:
        section.figures.append(_heatmaps(cells, models[:MAX_PANELS], datasets, shown, confidence))
        section.figures.append(_class_map(verdicts, datasets, shown))
    section.data["synergy"] = result.frame
    section.data["synergy_classes"] = result.class_frame
    return section


def _describe(dataset: str, measure: str, signs: dict[str, int], per_model: bool) -> str:
    if not per_model:  # universal: every model has the class's sign
        return f"{dataset} → {measure} ({len(signs)} base models)"
    marks = ", ".join(f"{m} {'+' if s > 0 else '−' if s < 0 else '0'}" for m, s in sorted(signs.items()))
    return f"{dataset} → {measure} ({marks})"


def _cell_text(cell: CellGain | None) -> str:
    if cell is None:
        return "–"
    q = f" q={cell.q:.2g}" if math.isfinite(cell.q) else ""
    return f"{cell.ci}{q}{' +' if cell.sign > 0 else ' −' if cell.sign < 0 else ''}"


def _heatmaps(
    cells: dict[Cell, CellGain], models: list[str], datasets: list[str], measures: list[Measure], confidence: float
) -> bytes:
    """One heatmap per base model (headline metrics).

    Colours are scaled per metric (metrics differ in range); * marks an effect.
    """
    fig, axes = subplots(len(models), width=1.8 + 0.9 * len(measures), height=1.4 + 0.42 * len(datasets))
    scale = {
        m.name: max((abs(c.ci.mean) for (_, _, me), c in cells.items() if me == m.name), default=1.0) or 1.0
        for m in measures
    }
    for ax, model in zip(axes, models, strict=True):
        grid = np.array(
            [
                [
                    cells[model, d, m.name].ci.mean / scale[m.name] if (model, d, m.name) in cells else math.nan
                    for m in measures
                ]
                for d in datasets
            ]
        )
        ax.imshow(np.ma.masked_invalid(grid), cmap="RdBu", vmin=-1, vmax=1, aspect="auto")
        found = [
            (i, j, c)
            for i, d in enumerate(datasets)
            for j, m in enumerate(measures)
            if (c := cells.get((model, d, m.name)))
        ]
        if len(datasets) * len(measures) <= ANNOTATE_ALL:
            for i, j, c in found:
                colour = "white" if abs(grid[i][j]) > 0.6 else "black"
                weight = "bold" if c.sign else "normal"
                ax.text(
                    j,
                    i,
                    f"{c.ci.mean:+.2g}{'*' if c.sign else ''}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color=colour,
                    fontweight=weight,
                )
        else:  # too many cells to print: one marker artist for the effects (the tables keep the values)
            marked = [(j, i) for i, j, c in found if c.sign]
            if marked:
                ax.scatter(*zip(*marked, strict=True), marker="*", s=14, color="black", linewidths=0)
        ax.set_xticks(range(len(measures)), [m.name for m in measures], rotation=40, ha="right", fontsize=7)
        ax.set_yticks(range(len(datasets)), datasets, fontsize=8)
        ax.set_title(f"{model} (* = effect, q < {alpha(confidence):g})", fontsize=9)
    return png(fig)


def _class_map(
    verdicts: dict[tuple[str, str], tuple[str, dict[str, int]]], datasets: list[str], measures: list[Measure]
) -> bytes:
    from matplotlib.colors import ListedColormap

    colours = {
        UNIVERSAL_UP: "#2166ac",
        UNIVERSAL_DOWN: "#b2182b",
        SPECIFIC: "#f4a582",
        NONE: "#f7f7f7",
        ONE_MODEL: "#dddddd",
    }
    order = list(colours)
    fig, (ax,) = subplots(1, width=2.4 + 0.9 * len(measures), height=1.6 + 0.42 * len(datasets))
    grid = np.array(
        [
            [order.index(verdicts[d, m.name][0]) if (d, m.name) in verdicts else order.index(NONE) for m in measures]
            for d in datasets
        ]
    )
    ax.imshow(grid, cmap=ListedColormap(list(colours.values())), vmin=-0.5, vmax=len(order) - 0.5, aspect="auto")
    if len(datasets) * len(measures) <= ANNOTATE_ALL:
        for i in range(len(datasets)):
            for j in range(len(measures)):
                ax.text(j, i, order[grid[i][j]], ha="center", va="center", fontsize=6)
    else:
        from matplotlib.patches import Patch

        ax.legend(
            handles=[Patch(color=c, label=k) for k, c in colours.items()],
            fontsize=6,
            loc="upper left",
            bbox_to_anchor=(1, 1),
        )
    ax.set_xticks(range(len(measures)), [m.name for m in measures], rotation=40, ha="right", fontsize=7)
    ax.set_yticks(range(len(datasets)), datasets, fontsize=8)
    ax.set_title("synergy class per dataset × benchmark metric", fontsize=9)
    return png(fig)
