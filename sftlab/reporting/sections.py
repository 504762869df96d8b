"""The report's content, computed once as sections (text, tables, PNG figures, data tables).

The same sections serve whatever the output format.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sftlab import metric_names
from sftlab.reporting.content import Section, Table
from sftlab.reporting.gains import best_section, gain_section
from sftlab.reporting.layers import layer_section
from sftlab.reporting.methods import curve_section, factors_section, method_section
from sftlab.reporting.prediction import prediction_section
from sftlab.reporting.predictors import predictor_section
from sftlab.reporting.stats import BOOTSTRAP
from sftlab.reporting.synergy import synergy_section
from sftlab.reporting.trials import Measure, TrialRow, finished
from sftlab.reporting.trials import measures as find_measures

if TYPE_CHECKING:
    from sftlab.reporting.gain_model import Predictor

__all__ = ["Options", "Report", "Section", "Table", "build_sections"]


@dataclass(frozen=True)
class Options:
    resamples: int = BOOTSTRAP  # bootstrap resamples per correlation CI
    seed: int = 0
    experiment: str = ""


@dataclass
class Report:
    sections: list[Section]
    files: dict[str, str] = field(default_factory=dict)  # extra files written next to the pages (predictor.json)
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


def build_sections(rows: list[TrialRow], options: Options = Options()) -> Report:
    """Every section; the cross-trial analyses only once some finished trial has logged a gain."""
    done = finished(rows)
    measures = find_measures(done)
    summary = summary_section(rows, measures)
    if not measures:
        summary.text.append("No finished trial has logged benchmark gains (gain/*) yet: nothing to analyse.")
        return Report([summary, gain_section(done, measures), compute_section(rows)])
    report = Report([summary])
    predictor: list[Predictor] = []

    def prediction() -> Section:
        section, fitted = prediction_section(done, measures, options.experiment)
        predictor.append(fitted)
        return section

    builders: list[tuple[str, Callable[[], Section]]] = [
        ("best", lambda: best_section(done, measures)),
        ("gains", lambda: gain_section(done, measures)),
        ("predictors", lambda: predictor_section(done, measures, options.resamples, options.seed)),
        ("layers", lambda: layer_section(done, measures, options.resamples, options.seed)),
        ("synergy", lambda: synergy_section(done, measures)),
        ("methods", lambda: method_section(done, measures)),
        ("curves", lambda: curve_section(done, measures)),
        ("factors", lambda: factors_section(done, measures)),
        ("prediction", prediction),
        ("compute", lambda: compute_section(rows)),
    ]
    for name, build in builders:
        started = time.perf_counter()
        report.sections.append(build())
        report.seconds[name] = time.perf_counter() - started
    if predictor and predictor[0].targets:
        report.files["predictor.json"] = predictor[0].to_json()
    return report
