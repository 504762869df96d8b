"""The report's content, computed once as sections (text, tables, PNG figures, data tables).

Each cross-trial section is a pair from its module: ``analyse(done, measures, options)`` computes
the numbers (dataclasses and DataFrames, without matplotlib), ``render(result)`` turns them into a
``Section``. The same sections serve whatever the output format.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sftlab import metric_names
from sftlab.reporting import gains, layers, methods, prediction, predictors, synergy
from sftlab.reporting.content import Options, Section, Table
from sftlab.reporting.trials import Measure, TrialRow, finished
from sftlab.reporting.trials import measures as find_measures

Analyse = Callable[[list[TrialRow], list[Measure], Options], Any]
# The cross-trial sections in report order: name -> (analyse, render).
ANALYSES: dict[str, tuple[Analyse, Callable[[Any], Section]]] = {
    "best": (gains.analyse_best, gains.render_best),
    "gains": (gains.analyse, gains.render),
    "predictors": (predictors.analyse, predictors.render),
    "layers": (layers.analyse, layers.render),
    "synergy": (synergy.analyse, synergy.render),
    "methods": (methods.analyse, methods.render),
    "curves": (methods.analyse_curves, methods.render_curves),
    "factors": (methods.analyse_factors, methods.render_factors),
    "prediction": (prediction.analyse, prediction.render),
}
DEFAULT_OPTIONS = Options()  # frozen, so one shared default is safe

__all__ = ["Options", "Report", "Section", "Table", "build_sections"]


@dataclass
class Report:
    sections: list[Section]
    files: dict[str, str] = field(default_factory=dict)  # extra files written next to the pages (predictor.json)
    results: dict[str, Any] = field(default_factory=dict)  # each analysis's result, by ANALYSES name
    seconds: dict[str, float] = field(default_factory=dict)  # time spent per section (the scale benchmark prints it)


def summary_section(rows: list[TrialRow], measures: list[Measure]) -> Section:
    done = finished(rows)
    counts = {s: sum(r.status == s for r in rows) for s in ("finished", "failed", "missing")}
    section = Section("Summary")
    section.text.append(
        f"{len(rows)} trials: {counts['finished']} finished, {counts['failed']} failed, {counts['missing']} missing."
    )
    benchmarks = sorted({m.benchmark for m in measures})
    section.text.append(f"Benchmarks: {', '.join(benchmarks) or 'none logged'}.")
    section.text.append(f"Benchmark metrics analysed: {', '.join(m.name for m in measures) or 'none'}.")
    for what in ("base_model", "dataset", "method"):
        found = sorted({r.tag(what) for r in done} - {""})
        section.text.append(f"{what.replace('_', ' ').capitalize()}s: {', '.join(found) or '–'}.")
    checkpoints = sum(len(r.epochs) for r in done)
    if checkpoints:
        section.text.append(f"Checkpoint evaluations: {checkpoints} (per-epoch curves below).")
    unfinished = [r for r in rows if r.status != "finished"]
    if unfinished:
        table = [[r.label, r.status, r.note.splitlines()[0][:300] if r.note else "", r.key] for r in unfinished]
        section.tables.append(
            Table(["trial", "status", "cause", "key"], table, caption="Trials without a finished run")
        )
    return section


def compute_section(rows: list[TrialRow]) -> Section:
    """Where the study's compute goes: the paper spent ~30× more on evaluation than on training."""
    totals: dict[str, float] = {}
    for row in finished(rows):
        for name, value in row.metrics.items():
            if found := metric_names.parse_stage_time(name):
                totals[found.stage] = totals.get(found.stage, 0.0) + value
    grand = sum(totals.values()) or 1.0
    table = [[stage, f"{seconds:,.1f}", f"{seconds / grand:.0%}"] for stage, seconds in sorted(totals.items())]
    text = ["Wall-clock seconds per stage, summed over finished trials."] if table else ["No stage timings logged."]
    return Section("Compute by stage", text, [Table(["stage", "seconds", "share"], table)])


def build_sections(rows: list[TrialRow], options: Options = DEFAULT_OPTIONS) -> Report:
    """Every section; the cross-trial analyses only once some finished trial has logged a gain."""
    done = finished(rows)
    measures = find_measures(done)
    summary = summary_section(rows, measures)
    if not measures:
        summary.text.append("No finished trial has logged benchmark gains (gain/*) yet: nothing to analyse.")
        return Report([summary, gains.render(gains.analyse(done, measures, options)), compute_section(rows)])
    report = Report([summary])
    for name, (analyse, render) in ANALYSES.items():
        started = time.perf_counter()
        report.results[name] = analyse(done, measures, options)
        report.sections.append(render(report.results[name]))
        report.seconds[name] = time.perf_counter() - started
    started = time.perf_counter()
    report.sections.append(compute_section(rows))
    report.seconds["compute"] = time.perf_counter() - started
    predictor = report.results["prediction"]
    if predictor.targets:
        report.files["predictor.json"] = predictor.to_json()
    return report
