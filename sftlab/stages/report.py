"""Report stage: one cross-trial report of a sweep (or a whole experiment), read back from MLflow.

It is built to show the study's findings (arXiv 2506.14681) on any sweep: whether data perplexity
under the base model predicts SFT gains better than length does, whether mid-depth weight change
tracks gains, which dataset × benchmark synergies hold across base models, and how method and
hyper-parameters shift gains. Everything comes from paged run searches (run objects carry their
metrics, params and tags), so a thousand-trial sweep costs a handful of requests. The content is
computed once as sections, then rendered as self-contained HTML and as a terminal Markdown summary.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import math
import re
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from sftlab.errors import SftlabError
from sftlab.tracking import TAG_ERROR, TAG_STAGE, TAG_TRIAL_KEY, Tracker
from sftlab.weight_diff import DEPTHS, depth_bucket

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from mlflow.entities import Run

    from sftlab.job import RunContext

NA = "n/a (too few trials)"
REPORT_FILES = ("report.html", "report.md", "trials.csv")
ARTIFACT_DIR = "report"
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
_GAIN = re.compile(r"^gain/(?P<benchmark>.+)/(?P<metric>[^/]+)$")
_LAYER = re.compile(r"^weights/layer_(\d+)/rel_change$")
_TIME = re.compile(r"^time/(?P<stage>.+)_s$")
_TRIAL_QUERY = f"tags.`{TAG_STAGE}` = 'trial'"
_NEWEST_FIRST = ["attributes.start_time DESC"]



class TrialRef(Protocol):
    """A planned trial as the report needs it (``sftlab.grid.Trial`` is one)."""

    @property
    def key(self) -> str: ...

    @property
    def label(self) -> str: ...


# ---------------------------------------------------------------------------------------------
# Trial rows


@dataclass
class TrialRow:
    """One planned trial: its newest FINISHED run, or why it has none."""

    key: str
    label: str
    status: str  # finished | failed | missing
    run: Run | None = None
    note: str = ""

    @cached_property
    def metrics(self) -> dict[str, float]:
        return dict(self.run.data.metrics) if self.run and self.status == "finished" else {}

    @cached_property
    def params(self) -> dict[str, str]:
        return dict(self.run.data.params) if self.run else {}

    def tag(self, name: str) -> str:
        return self.run.data.tags.get(f"sftlab.{name}", "") if self.run else ""

    def metric(self, name: str) -> float | None:
        value = self.metrics.get(name)
        return value if value is not None and math.isfinite(value) else None


def _runs_by_key(tracker: Tracker) -> tuple[dict[str, Run], dict[str, Run]]:
    """Newest FINISHED and newest FAILED run of each trial key, from one paged search."""
    newest: dict[str, dict[str, Run]] = {"FINISHED": {}, "FAILED": {}}
    for run in tracker.search(_TRIAL_QUERY, order_by=_NEWEST_FIRST):
        key = run.data.tags.get(TAG_TRIAL_KEY)
        if key and run.info.status in newest:
            newest[run.info.status].setdefault(key, run)
    return newest["FINISHED"], newest["FAILED"]


def _trial_row(key: str, label: str, finished: dict[str, Run], failed: dict[str, Run]) -> TrialRow:
    """Finished if any run finished (a retry after a failure counts once), else failed, else missing."""
    if key in finished:
        return TrialRow(key, label, "finished", finished[key])
    if key in failed:
        return TrialRow(key, label, "failed", failed[key], failed[key].data.tags.get(TAG_ERROR, "no error recorded"))
    return TrialRow(key, label, "missing", note="no finished or failed run")


def _finished(rows: list[TrialRow]) -> list[TrialRow]:
    return [r for r in rows if r.status == "finished"]


# ---------------------------------------------------------------------------------------------
# Statistics


@dataclass(frozen=True)
class Measure:
    """One benchmark metric whose gain over the base model is analysed (e.g. gsm8k/exact_match)."""

    benchmark: str
    metric: str

    @property
    def name(self) -> str:
        return f"{self.benchmark}/{self.metric}"

    def value(self, row: TrialRow, kind: str) -> float | None:
        """``kind`` is eval (fine-tuned score), base or gain."""
        return row.metric(f"{kind}/{self.benchmark}/{self.metric}")

    def gain(self, row: TrialRow) -> float | None:
        return self.value(row, "gain")


def _measures(rows: list[TrialRow]) -> list[Measure]:
    """Every benchmark metric with a logged gain; exact match first, the headline score."""
    found = {Measure(m["benchmark"], m["metric"]) for r in rows for k in r.metrics if (m := _GAIN.match(k))}
    return sorted(found, key=lambda m: (m.benchmark, m.metric != "exact_match", m.metric))


@dataclass(frozen=True)
class Corr:
    rho: float
    p: float
    n: int

    def __str__(self) -> str:
        return f"ρ = {self.rho:+.2f} (p = {self.p:.2g}, n = {self.n})"


def spearman(pairs: Iterable[tuple[float | None, float | None]]) -> Corr | None:
    """Spearman ρ over complete pairs; None when undefined (fewer than 3 points or a constant side)."""
    complete = [(x, y) for x, y in pairs if x is not None and y is not None]
    xs, ys = [x for x, _ in complete], [y for _, y in complete]
    if len(complete) < 3 or len(set(xs)) < 2 or len(set(ys)) < 2:
        return None
    from scipy.stats import spearmanr

    result = spearmanr(xs, ys)
    return Corr(float(result.statistic), float(result.pvalue), len(complete))


def _corr(rows: list[TrialRow], metric: str, measure: Measure) -> Corr | None:
    return spearman((r.metric(metric), measure.gain(r)) for r in rows)


def _strongest(corrs: dict[str, Corr | None]) -> tuple[str, Corr] | None:
    """The entry with the largest |ρ|, if any is defined."""
    defined = [(name, c) for name, c in corrs.items() if c is not None]
    return max(defined, key=lambda item: abs(item[1].rho)) if defined else None


def _mean(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.fmean(present) if present else None


def _fmt(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "–"
    return f"{value:+.4g}" if signed else f"{value:.4g}"


def _cell(corr: Corr | None) -> str:
    return str(corr) if corr else NA


# ---------------------------------------------------------------------------------------------
# Content


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


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=90)
    return buffer.getvalue()


def _subplots(count: int, width: float = 4.2, height: float = 3.4) -> tuple[Figure, list[Any]]:
    """A figure with ``count`` panels, three per row (no pyplot: safe off the main thread)."""
    from matplotlib.figure import Figure

    cols = min(3, max(1, count))
    rows = math.ceil(max(1, count) / cols)
    fig = Figure(figsize=(width * cols, height * rows))
    axes = [fig.add_subplot(rows, cols, i + 1) for i in range(max(1, count))]
    return fig, axes


def _varying_params(rows: list[TrialRow]) -> list[str]:
    """Training params whose value differs between finished trials: the sweep's axes (method has its own tag)."""
    values: dict[str, set[str]] = {}
    for row in rows:
        for name, value in row.params.items():
            if name.startswith("training.") and name != "training.method":
                values.setdefault(name, set()).add(value)
    return sorted(name for name, seen in values.items() if len(seen) > 1)


def summary_section(rows: list[TrialRow], measures: list[Measure]) -> Section:
    done = _finished(rows)
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
    done = _finished(rows)
    params = sorted(set(KEY_PARAMS) | set(_varying_params(done)))
    headers = ["trial", "base model", "dataset", "method", *(p.removeprefix("training.") for p in params)]
    headers += ["data ppl", "train loss"]
    headers += [f"{m.name} {what}" for m in measures for what in ("score", "base", "gain")]
    table = []
    for row in sorted(done, key=lambda r: r.label):
        cells = [row.label, row.tag("base_model"), row.tag("dataset"), row.tag("method")]
        cells += [row.params.get(p, "–") for p in params]
        cells += [_fmt(row.metric(PPL)), _fmt(row.metric("train/final_loss"))]
        for m in measures:
            cells += [_fmt(m.value(row, "eval")), _fmt(m.value(row, "base")), _fmt(m.gain(row), signed=True)]
        table.append(cells)
    text = ["Newest finished run of each trial; every column is in trials.csv."]
    return Section("Trials", text, [Table(headers, table, in_markdown=False)])


def best_section(rows: list[TrialRow], measures: list[Measure]) -> Section:
    done = _finished(rows)
    table = []
    for m in measures:
        scored = [r for r in done if m.gain(r) is not None]
        if scored:
            best = max(scored, key=lambda r: m.gain(r) or 0.0)
            scores = [_fmt(m.value(best, "eval")), _fmt(m.value(best, "base")), _fmt(m.gain(best), True)]
            table.append([m.name, best.label, *scores])
    return Section("Best trial per benchmark", [], [Table(["benchmark", "trial", "score", "base", "gain"], table)])


def perplexity_section(rows: list[TrialRow], measures: list[Measure]) -> Section:
    """Finding 1: lower perplexity of the training responses under the base model → larger gains."""
    done = _finished(rows)
    corrs = {m: {metric: _corr(done, metric, m) for metric in PREDICTORS} for m in measures}
    section = Section("Data perplexity vs gain")
    section.text.append("Spearman ρ of each data-profile measure with the gain, over all finished trials.")
    table = [[title, *(_cell(corrs[m][metric]) for m in measures)] for metric, title in PREDICTORS.items()]
    section.tables.append(Table(["predictor", *(m.name for m in measures)], table))
    for m in measures:
        best = _strongest({PREDICTORS[metric]: c for metric, c in corrs[m].items()})
        verdict = f"; strongest predictor: {best[0]}" if best else ""
        section.text.append(f"{m.name}: perplexity {_cell(corrs[m][PPL])}{verdict}.")
    if measures:
        section.figures.append(_perplexity_plot(done, measures, {m: corrs[m][PPL] for m in measures}))
    return section


def _perplexity_plot(done: list[TrialRow], measures: list[Measure], corrs: dict[Measure, Corr | None]) -> bytes:
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    fig, axes = _subplots(len(measures))
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
        ax.set_title(f"{m.name}: {_cell(corrs[m])}", fontsize=9)
        ax.legend(fontsize=7)
    return _png(fig)


def _layers(rows: list[TrialRow]) -> list[int]:
    return sorted({int(found.group(1)) for r in rows for k in r.metrics if (found := _LAYER.match(k))})


def layer_section(rows: list[TrialRow], measures: list[Measure]) -> Section:
    """Finding 2: weight change in the middle layers correlates most with gains."""
    done = _finished(rows)
    layers = _layers(done)
    section = Section("Layer change vs gain")
    section.text.append(
        "Spearman ρ of each layer's relative weight change ||ΔW||/||W|| with the gain (pooled over base models)."
    )
    names = {f"depth: {d}": f"weights/depth_{d}/rel_change" for d in DEPTHS}
    names["all weights"] = "weights/total/rel_change"
    names.update({f"layer {i}": f"weights/layer_{i}/rel_change" for i in layers})
    corrs = {m: {label: _corr(done, metric, m) for label, metric in names.items()} for m in measures}
    table = [[label, *(_cell(corrs[m][label]) for m in measures)] for label in names]
    section.tables.append(Table(["weights", *(m.name for m in measures)], table))
    for m in measures:
        depth = _strongest({d: corrs[m][f"depth: {d}"] for d in DEPTHS})
        layer = _strongest({label: c for label, c in corrs[m].items() if label.startswith("layer ")})
        if depth is None:
            section.text.append(f"{m.name}: depth {NA}.")
            continue
        strongest_layer = f"; strongest single layer: {layer[0]} ({layer[1]})" if layer else ""
        section.text.append(f"{m.name}: the {depth[0]} third correlates most ({depth[1]}){strongest_layer}.")
    if layers and measures:
        section.figures.append(_layer_plot(layers, measures, corrs))
    return section


def _layer_plot(layers: list[int], measures: list[Measure], corrs: dict[Measure, dict[str, Corr | None]]) -> bytes:
    fig, (ax,) = _subplots(1, width=7.5, height=3.8)
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
    return _png(fig)


def _mean_gains(done: list[TrialRow], measures: list[Measure]) -> dict[tuple[str, str, Measure], float]:
    """(base model, dataset, measure) → mean gain over that cell's trials (seeds, hyper-params)."""
    cells: dict[tuple[str, str], list[TrialRow]] = {}
    for row in done:
        cells.setdefault((row.tag("base_model"), row.tag("dataset")), []).append(row)
    means = {
        (model, dataset, m): _mean(m.gain(r) for r in group)
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
    done = _finished(rows)
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
        table = [[d, *(_fmt(gains.get((model, d, m)), True) for m in measures)] for d in datasets]
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
    fig, axes = _subplots(len(models), width=1.6 + 1.1 * len(measures), height=1.4 + 0.45 * len(datasets))
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
    return _png(fig)


def _param_of(name: str) -> Callable[[TrialRow], str]:
    return lambda row: row.params.get(name, "–")


def factors_section(rows: list[TrialRow], measures: list[Measure]) -> Section:
    """Finding 4: how method (LoRA vs full) and swept hyper-parameters shift the mean gain."""
    done = _finished(rows)
    factors: dict[str, Callable[[TrialRow], str]] = {"method": lambda r: r.tag("method")}
    for param in _varying_params(done):
        if param not in NOT_FACTORS:
            factors[param.removeprefix("training.")] = _param_of(param)
    table = []
    for name, level_of in factors.items():
        for level in sorted({level_of(r) for r in done}):
            group = [r for r in done if level_of(r) == level]
            means = [_fmt(_mean(m.gain(r) for r in group), True) for m in measures]
            table.append([f"{name} = {level}", str(len(group)), *means])
    headers = ["factor", "trials", *(f"mean gain {m.name}" for m in measures)]
    return Section("Method and hyper-parameters", [], [Table(headers, table)])


def compute_section(rows: list[TrialRow]) -> Section:
    """Where the study's compute goes: the paper spent ~30× more on evaluation than on training."""
    totals: dict[str, float] = {}
    for row in _finished(rows):
        for name, value in row.metrics.items():
            if found := _TIME.match(name):
                totals[found["stage"]] = totals.get(found["stage"], 0.0) + value
    grand = sum(totals.values()) or 1.0
    table = [[stage, f"{seconds:,.1f}", f"{seconds / grand:.0%}"] for stage, seconds in sorted(totals.items())]
    text = ["Wall-clock seconds per stage, summed over finished trials."] if table else ["No stage timings logged."]
    return Section("Compute by stage", text, [Table(["stage", "seconds", "share"], table)])


def build_sections(rows: list[TrialRow]) -> list[Section]:
    """Every section; the cross-trial analyses only once some finished trial has logged a gain."""
    measures = _measures(_finished(rows))
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


# ---------------------------------------------------------------------------------------------
# Rendering

_CSS = (
    "body{font-family:system-ui,sans-serif;margin:2em;max-width:1500px}"
    "table{border-collapse:collapse;margin:.8em 0;font-size:12px}"
    "th,td{border:1px solid #ccc;padding:3px 6px;text-align:right}th{background:#f2f2f2}"
    "td:first-child,th:first-child{text-align:left}img{max-width:100%;display:block;margin:.8em 0}"
)


def _html_table(table: Table) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table.headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in table.rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(title: str, sections: list[Section]) -> str:
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"]
    parts.append(f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>")
    for section in sections:
        parts.append(f"<h2>{html.escape(section.title)}</h2>")
        parts += [f"<p>{html.escape(line)}</p>" for line in section.text]
        parts += [_html_table(t) for t in section.tables if t.rows]
        parts += [
            f"<img alt='{html.escape(section.title)}' src='data:image/png;base64,{base64.b64encode(png).decode()}'>"
            for png in section.figures
        ]
    parts.append("</body></html>")
    return "\n".join(parts)


def _md_table(table: Table) -> str:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(table.headers), line(["---"] * len(table.headers)), *map(line, table.rows)])


def render_markdown(title: str, sections: list[Section]) -> str:
    parts = [f"# {title}"]
    for section in sections:
        parts.append(f"## {section.title}")
        parts += section.text
        parts += [_md_table(t) for t in section.tables if t.in_markdown and t.rows]
    return "\n\n".join(parts) + "\n"


def write_csv(rows: list[TrialRow], path: Path) -> None:
    """Every planned trial with its status, training params and all metrics, one line each."""
    params = sorted({p for r in rows for p in r.params if p.startswith("training.")})
    metrics = sorted({k for r in rows for k in r.metrics})
    fixed = ["label", "key", "status", "note", "run_id", "base_model", "dataset", "method"]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(fixed + params + metrics)
        for r in rows:
            run_id = r.run.info.run_id if r.run else ""
            head = [r.label, r.key, r.status, r.note, run_id, r.tag("base_model"), r.tag("dataset"), r.tag("method")]
            writer.writerow(head + [r.params.get(p, "") for p in params] + [r.metrics.get(m, "") for m in metrics])


def write_report(rows: list[TrialRow], out_dir: Path, title: str) -> Path:
    """report.html, report.md and trials.csv in ``out_dir``; returns the HTML path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    sections = build_sections(rows)
    (out_dir / "report.html").write_text(render_html(title, sections), encoding="utf-8")
    (out_dir / "report.md").write_text(render_markdown(title, sections), encoding="utf-8")
    write_csv(rows, out_dir / "trials.csv")
    return out_dir / "report.html"


def _publish(tracker: Tracker, run_id: str | None, out_dir: Path) -> None:
    if run_id:
        for name in REPORT_FILES:
            tracker.log_artifact(run_id, out_dir / name, ARTIFACT_DIR)


# ---------------------------------------------------------------------------------------------
# Entry points


def build_for_sweep(tracker: Tracker, trials: list[TrialRef], ctx: RunContext) -> Path:
    """The report of a sweep's planned trials, written under the root and logged on the sweep run."""
    finished, failed = _runs_by_key(tracker)
    planned: dict[str, str] = {}
    for trial in trials:  # a key planned twice counts once
        planned.setdefault(trial.key, trial.label)
    rows = [_trial_row(key, label, finished, failed) for key, label in planned.items()]
    out_dir = Path(ctx.root) / "reports" / ctx.experiment
    path = write_report(rows, out_dir, f"sftlab report: {ctx.experiment}")
    _publish(tracker, ctx.sweep_run_id, out_dir)
    return path


def build_for_experiment(tracking_uri: str, experiment: str, out_dir: Path) -> Path:
    """The report of every trial ever run in an experiment (``sftlab report --experiment NAME``)."""
    from mlflow import MlflowClient

    if MlflowClient(tracking_uri).get_experiment_by_name(experiment) is None:
        raise SftlabError(f"MLflow at {tracking_uri}: no experiment named {experiment!r}")
    tracker = Tracker(tracking_uri, experiment)
    finished, failed = _runs_by_key(tracker)
    runs = {**failed, **finished}
    labels = {key: run.data.tags.get("sftlab.label") or run.info.run_name or key for key, run in runs.items()}
    rows = sorted((_trial_row(key, label, finished, failed) for key, label in labels.items()), key=lambda r: r.label)
    path = write_report(rows, Path(out_dir), f"sftlab report: {experiment}")
    sweep = tracker.latest(f"tags.`{TAG_STAGE}` = 'sweep'")
    _publish(tracker, sweep.info.run_id if sweep else None, Path(out_dir))
    return path
