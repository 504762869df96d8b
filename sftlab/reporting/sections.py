"""The report's content, computed once as sections (text, tables, PNG figures), whatever the output format."""

from __future__ import annotations

import io
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sftlab.reporting.stats import NA, Corr, cell, fmt, mean, spearman, strongest
from sftlab.reporting.trials import Measure, TrialRow, finished
from sftlab.reporting.trials import measures as find_measures
from sftlab.weight_diff import DEPTHS, depth_bucket

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PPL = "profile/ppl"
# Candidate predictors of gain; the study found data perplexity beats length and tokenizer fit.
PREDICTORS = {
    PPL: "perplexity (token-weighted)",
    "profile/ppl_mean_example": "perplexity (mean per example)",
    "profile/response_tokens_mean": "response length (tokens)",
    "profile/tokens_mean": "example length (tokens)",
    "profile/truncated_share": "share truncated",
}
KEY_PARAMS = ("training.learning_rate", "training.epochs")
NOT_FACTORS = {"training.seed"}  # seeds vary by design; a mean gain per seed says nothing
LAYER = re.compile(r"^weights/layer_(\d+)/rel_change$")
TIME = re.compile(r"^time/(?P<stage>.+)_s$")


def corr(rows: list[TrialRow], metric: str, measure: Measure) -> Corr | None:
    return spearman((r.metric(metric), measure.gain(r)) for r in rows)



@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]
    in_markdown: bool = True


@dataclass
class Section:
    title: str
    text: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    figures: list[bytes] = field(default_factory=list)  # PNG


def png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=90)
    return buffer.getvalue()


def subplots(count: int, width: float = 4.2, height: float = 3.4) -> tuple[Figure, list[Any]]:
    """A figure with ``count`` panels, three per row (no pyplot: safe off the main thread)."""
    from matplotlib.figure import Figure

    cols = min(3, max(1, count))
    rows = math.ceil(max(1, count) / cols)
    fig = Figure(figsize=(width * cols, height * rows))
    axes = [fig.add_subplot(rows, cols, i + 1) for i in range(max(1, count))]
    return fig, axes


def varying_params(rows: list[TrialRow]) -> list[str]:
    """Training params whose value differs between finished trials: the sweep's axes (method has its own tag)."""
    values: dict[str, set[str]] = {}
    for row in rows:
        for name, value in row.params.items():
            if name.startswith("training.") and name != "training.method":
                values.setdefault(name, set()).add(value)
    return sorted(name for name, seen in values.items() if len(seen) > 1)


def summary_section(rows: list[TrialRow], measures: list[Measure]) -> Section:
    done = finished(rows)
    counts = {s: sum(r.status == s for r in rows) for s in ("finished", "failed", "missing")}
    section = Section("Summary")
    section.text.append(
        f"{len(rows)} trials: {counts['finished']} finished, {counts['failed']} failed, {counts['missing']} missing."
    )
    benchmarks = sorted({m.benchmark for m in measures})
    section.text.append(f"Benchmarks: {', '.join(benchmarks) or 'none logged'}.")
    for what in ("base_model", "dataset", "method"):
        found = sorted({r.tag(what) for r in done} - {""})
        section.text.append(f"{what.replace('_', ' ').capitalize()}s: {', '.join(found) or '–'}.")
    unfinished = [r for r in rows if r.status != "finished"]
    if unfinished:
        table = [[r.label, r.status, r.note.splitlines()[0][:300] if r.note else "", r.key] for r in unfinished]
        section.tables.append(Table(["trial", "status", "cause", "key"], table))
    return section


def trials_section(rows: list[TrialRow], measures: list[Measure]) -> Section:
    done = finished(rows)
    params = sorted(set(KEY_PARAMS) | set(varying_params(done)))
    headers = ["trial", "base model", "dataset", "method", *(p.removeprefix("training.") for p in params)]
    headers += ["data ppl", "train loss"]
    headers += [f"{m.name} {what}" for m in measures for what in ("score", "base", "gain")]
    table = []
    for row in sorted(done, key=lambda r: r.label):
        cells = [row.label, row.tag("base_model"), row.tag("dataset"), row.tag("method")]
        cells += [row.params.get(p, "–") for p in params]
        cells += [fmt(row.metric(PPL)), fmt(row.metric("train/final_loss"))]
        for m in measures:
            cells += [fmt(m.value(row, "eval")), fmt(m.value(row, "base")), fmt(m.gain(row), signed=True)]
        table.append(cells)
    text = ["Newest finished run of each trial; every column is in trials.csv."]
    return Section("Trials", text, [Table(headers, table, in_markdown=False)])


def best_section(rows: list[TrialRow], measures: list[Measure]) -> Section:
    done = finished(rows)
    table = []
    for m in measures:
        scored = [r for r in done if m.gain(r) is not None]
        if scored:
            best = max(scored, key=lambda r: m.gain(r) or 0.0)
            scores = [fmt(m.value(best, "eval")), fmt(m.value(best, "base")), fmt(m.gain(best), True)]
            table.append([m.name, best.label, *scores])
    return Section("Best trial per benchmark", [], [Table(["benchmark", "trial", "score", "base", "gain"], table)])


def perplexity_section(rows: list[TrialRow], measures: list[Measure]) -> Section:
    """Finding 1: lower perplexity of the training responses under the base model → larger gains."""
    done = finished(rows)
    corrs = {m: {metric: corr(done, metric, m) for metric in PREDICTORS} for m in measures}
    section = Section("Data perplexity vs gain")
    section.text.append("Spearman ρ of each data-profile measure with the gain, over all finished trials.")
    table = [[title, *(cell(corrs[m][metric]) for m in measures)] for metric, title in PREDICTORS.items()]
    section.tables.append(Table(["predictor", *(m.name for m in measures)], table))
    for m in measures:
        best = strongest({PREDICTORS[metric]: c for metric, c in corrs[m].items()})
        verdict = f"; strongest predictor: {best[0]}" if best else ""
        section.text.append(f"{m.name}: perplexity {cell(corrs[m][PPL])}{verdict}.")
    if measures:
        section.figures.append(_perplexity_plot(done, measures, {m: corrs[m][PPL] for m in measures}))
    return section


def _perplexity_plot(done: list[TrialRow], measures: list[Measure], corrs: dict[Measure, Corr | None]) -> bytes:
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    fig, axes = subplots(len(measures))
    models = sorted({r.tag("base_model") for r in done})
    for ax, m in zip(axes, measures, strict=True):
        for model in models:
            points = [(r.metric(PPL), m.gain(r)) for r in done if r.tag("base_model") == model]
            points = [(x, y) for x, y in points if x is not None and y is not None]
            ax.scatter([x for x, _ in points], [y for _, y in points], label=model or "?", s=18)
        ax.set_xscale("log")  # perplexities of different base models span orders of magnitude
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("training-data perplexity under the base model")
        ax.set_ylabel(f"gain {m.name}")
        ax.set_title(f"{m.name}: {cell(corrs[m])}", fontsize=9)
        ax.legend(fontsize=7)
    return png(fig)


def _layers(rows: list[TrialRow]) -> list[int]:
    return sorted({int(found.group(1)) for r in rows for k in r.metrics if (found := LAYER.match(k))})


def layer_section(rows: list[TrialRow], measures: list[Measure]) -> Section:
    """Finding 2: weight change in the middle layers correlates most with gains."""
    done = finished(rows)
    layers = _layers(done)
    section = Section("Layer change vs gain")
    section.text.append(
        "Spearman ρ of each layer's relative weight change ||ΔW||/||W|| with the gain (pooled over base models)."
    )
    names = {f"depth: {d}": f"weights/depth_{d}/rel_change" for d in DEPTHS}
    names["all weights"] = "weights/total/rel_change"
    names.update({f"layer {i}": f"weights/layer_{i}/rel_change" for i in layers})
    corrs = {m: {label: corr(done, metric, m) for label, metric in names.items()} for m in measures}
    table = [[label, *(cell(corrs[m][label]) for m in measures)] for label in names]
    section.tables.append(Table(["weights", *(m.name for m in measures)], table))
    for m in measures:
        depth = strongest({d: corrs[m][f"depth: {d}"] for d in DEPTHS})
        layer = strongest({label: c for label, c in corrs[m].items() if label.startswith("layer ")})
        if depth is None:
            section.text.append(f"{m.name}: depth {NA}.")
            continue
        strongest_layer = f"; strongest single layer: {layer[0]} ({layer[1]})" if layer else ""
        section.text.append(f"{m.name}: the {depth[0]} third correlates most ({depth[1]}){strongest_layer}.")
    if layers and measures:
        section.figures.append(_layer_plot(layers, measures, corrs))
    return section


def _layer_plot(layers: list[int], measures: list[Measure], corrs: dict[Measure, dict[str, Corr | None]]) -> bytes:
    fig, (ax,) = subplots(1, width=7.5, height=3.8)
    for m in measures:
        rhos = [c.rho if (c := corrs[m][f"layer {i}"]) else math.nan for i in layers]
        ax.plot(layers, rhos, marker="o", label=m.name)
    middle = [i for i in layers if depth_bucket(i, max(layers) + 1) == "middle"]
    if middle:
        ax.axvspan(min(middle) - 0.5, max(middle) + 0.5, color="0.9", label="middle third")
    ax.axhline(0, color="0.5", linewidth=0.8)
    ax.set_xlabel("layer")
    ax.set_ylabel("Spearman ρ (weight change, gain)")
    ax.set_ylim(-1.05, 1.05)
    ax.legend(fontsize=7)
    return png(fig)


def _mean_gains(done: list[TrialRow], measures: list[Measure]) -> dict[tuple[str, str, Measure], float]:
    """(base model, dataset, measure) → mean gain over that cell's trials (seeds, hyper-params)."""
    cells: dict[tuple[str, str], list[TrialRow]] = {}
    for row in done:
        cells.setdefault((row.tag("base_model"), row.tag("dataset")), []).append(row)
    means = {
        (model, dataset, m): mean(m.gain(r) for r in group)
        for (model, dataset), group in cells.items()
        for m in measures
    }
    return {cell: value for cell, value in means.items() if value is not None}


def _consistency(values: list[float]) -> str:
    if len(values) < 2:
        return "n/a (one base model)"
    if all(v > 0 for v in values):
        return "universal +"
    if all(v < 0 for v in values):
        return "universal −"
    return "model-specific"


def synergy_section(rows: list[TrialRow], measures: list[Measure]) -> Section:
    """Finding 3: which training data helps which benchmark, and whether that holds for every base model."""
    done = finished(rows)
    gains = _mean_gains(done, measures)
    models = sorted({model for model, _, _ in gains})
    datasets = sorted({dataset for _, dataset, _ in gains})
    section = Section("Task synergy: mean gain per dataset × benchmark")
    section.text.append(
        "Mean gain over each cell's trials, one table per base model; the last table says whether a "
        "dataset's effect on a benchmark has the same sign for every base model (universal) or not."
    )
    headers = ["dataset", *(m.name for m in measures)]
    for model in models:
        table = [[d, *(fmt(gains.get((model, d, m)), True) for m in measures)] for d in datasets]
        section.tables.append(Table([f"dataset ({model})", *headers[1:]], table))
    consistency = [
        [d, *(_consistency([gains[mo, d, m] for mo in models if (mo, d, m) in gains]) for m in measures)]
        for d in datasets
    ]
    section.tables.append(Table(["dataset (all base models)", *headers[1:]], consistency))
    if models and datasets and measures:
        section.figures.append(_synergy_plot(gains, models, datasets, measures))
    return section


def _synergy_plot(
    gains: dict[tuple[str, str, Measure], float], models: list[str], datasets: list[str], measures: list[Measure]
) -> bytes:
    """One heatmap per base model; colours scaled per benchmark (metrics differ in range)."""
    fig, axes = subplots(len(models), width=1.6 + 1.1 * len(measures), height=1.4 + 0.45 * len(datasets))
    scale = {m: max((abs(v) for (_, _, mm), v in gains.items() if mm == m), default=1.0) or 1.0 for m in measures}
    for ax, model in zip(axes, models, strict=True):
        grid = [[gains.get((model, d, m), math.nan) / scale[m] for m in measures] for d in datasets]
        ax.imshow(grid, cmap="RdBu", vmin=-1, vmax=1, aspect="auto")
        for i, d in enumerate(datasets):
            for j, m in enumerate(measures):
                if (model, d, m) in gains:
                    colour = "white" if abs(grid[i][j]) > 0.6 else "black"
                    ax.text(j, i, f"{gains[model, d, m]:+.3g}", ha="center", va="center", fontsize=7, color=colour)
        ax.set_xticks(range(len(measures)), [m.name for m in measures], rotation=40, ha="right", fontsize=7)
        ax.set_yticks(range(len(datasets)), datasets, fontsize=8)
        ax.set_title(model, fontsize=9)
    return png(fig)


def _param_of(name: str) -> Callable[[TrialRow], str]:
    return lambda row: row.params.get(name, "–")


def factors_section(rows: list[TrialRow], measures: list[Measure]) -> Section:
    """Finding 4: how method (LoRA vs full) and swept hyper-parameters shift the mean gain."""
    done = finished(rows)
    factors: dict[str, Callable[[TrialRow], str]] = {"method": lambda r: r.tag("method")}
    for param in varying_params(done):
        if param not in NOT_FACTORS:
            factors[param.removeprefix("training.")] = _param_of(param)
    table = []
    for name, level_of in factors.items():
        for level in sorted({level_of(r) for r in done}):
            group = [r for r in done if level_of(r) == level]
            means = [fmt(mean(m.gain(r) for r in group), True) for m in measures]
            table.append([f"{name} = {level}", str(len(group)), *means])
    headers = ["factor", "trials", *(f"mean gain {m.name}" for m in measures)]
    return Section("Method and hyper-parameters", [], [Table(headers, table)])


def compute_section(rows: list[TrialRow]) -> Section:
    """Where the study's compute goes: the paper spent ~30× more on evaluation than on training."""
    totals: dict[str, float] = {}
    for row in finished(rows):
        for name, value in row.metrics.items():
            if found := TIME.match(name):
                totals[found["stage"]] = totals.get(found["stage"], 0.0) + value
    grand = sum(totals.values()) or 1.0
    table = [[stage, f"{seconds:,.1f}", f"{seconds / grand:.0%}"] for stage, seconds in sorted(totals.items())]
    text = ["Wall-clock seconds per stage, summed over finished trials."] if table else ["No stage timings logged."]
    return Section("Compute by stage", text, [Table(["stage", "seconds", "share"], table)])


def build_sections(rows: list[TrialRow]) -> list[Section]:
    """Every section; the cross-trial analyses only once some finished trial has logged a gain."""
    measures = find_measures(finished(rows))
    summary = summary_section(rows, measures)
    if not measures:
        summary.text.append("No finished trial has logged benchmark gains (gain/*) yet: nothing to analyse.")
        return [summary, trials_section(rows, measures), compute_section(rows)]
    return [
        summary,
        trials_section(rows, measures),
        best_section(rows, measures),
        perplexity_section(rows, measures),
        layer_section(rows, measures),
        synergy_section(rows, measures),
        factors_section(rows, measures),
        compute_section(rows),
    ]

