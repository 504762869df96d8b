"""Planned trials as report rows, read from MLflow in paged searches (one for trials, one for checkpoints)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Protocol

import numpy as np

from sftlab import metric_names
from sftlab.tracking.runs import TAG_ERROR, TAG_PARENT, TAG_STAGE, TAG_TRIAL_KEY, Tracker

if TYPE_CHECKING:
    from mlflow.entities import Run

HEADLINE = "score"  # every benchmark's headline metric (older runs: exact_match, then the rest)
TRIAL_QUERY = f"tags.`{TAG_STAGE}` = 'trial'"
CHECKPOINT_QUERY = f"tags.`{TAG_STAGE}` = 'checkpoint' AND attributes.status = 'FINISHED'"
TAG_EPOCH = "sftlab.epoch"
NEWEST_FIRST = ["attributes.start_time DESC"]


class TrialRef(Protocol):
    """A planned trial as the report needs it (``sftlab.spec.grid.Trial`` is one)."""

    @property
    def key(self) -> str: ...

    @property
    def label(self) -> str: ...


@dataclass
class TrialRow:
    """One planned trial: its newest FINISHED run, or why it has none; its per-epoch checkpoint metrics."""

    key: str
    label: str
    status: str  # finished | failed | missing
    run: Run | None = None
    note: str = ""
    epochs: dict[int, dict[str, float]] = field(default_factory=dict)

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

    @property
    def run_id(self) -> str:
        return self.run.info.run_id if self.run else ""


def runs_by_key(tracker: Tracker) -> tuple[dict[str, Run], dict[str, Run]]:
    """Newest FINISHED and newest FAILED run of each trial key, from one paged search."""
    newest: dict[str, dict[str, Run]] = {"FINISHED": {}, "FAILED": {}}
    for run in tracker.search(TRIAL_QUERY, order_by=NEWEST_FIRST):
        key = run.data.tags.get(TAG_TRIAL_KEY)
        if key and run.info.status in newest:
            newest[run.info.status].setdefault(key, run)
    return newest["FINISHED"], newest["FAILED"]


def trial_row(key: str, label: str, finished: dict[str, Run], failed: dict[str, Run]) -> TrialRow:
    """Finished if any run finished (a retry after a failure counts once), else failed, else missing."""
    if key in finished:
        return TrialRow(key, label, "finished", finished[key])
    if key in failed:
        return TrialRow(key, label, "failed", failed[key], failed[key].data.tags.get(TAG_ERROR, "no error recorded"))
    return TrialRow(key, label, "missing", note="no finished or failed run")


def attach_checkpoints(tracker: Tracker, rows: list[TrialRow]) -> None:
    """Per-epoch metrics of each finished trial, from its checkpoint child runs (one paged search).

    Only children of the trial run the report uses count, so a retried trial never mixes epochs of
    two runs; an epoch evaluated twice keeps its newest run.
    """
    by_run = {r.run_id: r for r in rows if r.status == "finished"}
    if not by_run:
        return
    for run in tracker.search(CHECKPOINT_QUERY, order_by=NEWEST_FIRST):
        row = by_run.get(run.data.tags.get(TAG_PARENT, ""))
        epoch = run.data.tags.get(TAG_EPOCH, "")
        if row is not None and epoch.lstrip("-").isdigit():
            row.epochs.setdefault(int(epoch), {k: v for k, v in run.data.metrics.items() if math.isfinite(v)})


def finished(rows: list[TrialRow]) -> list[TrialRow]:
    return [r for r in rows if r.status == "finished"]


@dataclass(frozen=True)
class Measure:
    """One benchmark metric whose gain over the base model is analysed (e.g. gsm8k/score)."""

    benchmark: str
    metric: str

    @property
    def name(self) -> str:
        return f"{self.benchmark}/{self.metric}"

    def key(self, kind: metric_names.BenchmarkKind) -> str:
        return metric_names.benchmark_metric(kind, self.benchmark, self.metric)

    def value(self, row: TrialRow, kind: metric_names.BenchmarkKind) -> float | None:
        """``kind`` is eval (fine-tuned score), base or gain."""
        return row.metric(self.key(kind))

    def gain(self, row: TrialRow) -> float | None:
        return self.value(row, "gain")

    def ci(self, row: TrialRow, kind: metric_names.BenchmarkKind = "gain") -> tuple[float, float] | None:
        """The logged CI of this metric (only the headline score has one), else None."""
        low, high = (row.metric(name) for name in metric_names.ci_bounds(self.key(kind)))
        return (low, high) if low is not None and high is not None else None

    def gains(self, rows: list[TrialRow]) -> np.ndarray:
        return column(rows, self.key("gain"))


def column(rows: list[TrialRow], metric: str) -> np.ndarray:
    """One metric over rows as floats, NaN where missing."""
    return np.array([v if (v := r.metrics.get(metric)) is not None else math.nan for r in rows], dtype=float)


def _order(metric: str) -> tuple[int, str]:
    return ({HEADLINE: 0, "exact_match": 1}.get(metric, 2), metric)


def measures(rows: list[TrialRow]) -> list[Measure]:
    """Every benchmark metric with a logged gain, headline first; CI bounds are not metrics.

    A metric that equals the benchmark's headline score on every trial (a GSM8K run logs its exact
    match both as ``score`` and as ``exact_match``) is analysed once, as the score.
    """
    found: set[Measure] = set()
    for row in rows:
        for name in row.metrics:
            m = metric_names.parse_benchmark_metric(name)
            if m and m.kind == "gain" and not metric_names.is_ci(name):
                found.add(Measure(m.benchmark, m.metric))
    kept = []
    for measure in sorted(found, key=lambda m: (m.benchmark, *_order(m.metric))):
        headline = Measure(measure.benchmark, HEADLINE)
        if measure.metric != HEADLINE and headline in found and _same(rows, measure, headline):
            continue
        kept.append(measure)
    return kept


def _same(rows: list[TrialRow], a: Measure, b: Measure) -> bool:
    x, y = a.gains(rows), b.gains(rows)
    return bool(
        np.array_equal(np.isnan(x), np.isnan(y)) and np.allclose(x[~np.isnan(x)], y[~np.isnan(y)], rtol=0, atol=1e-12)
    )


def headlines(measures_: list[Measure]) -> list[Measure]:
    """One measure per benchmark: its score, else its first metric."""
    first: dict[str, Measure] = {}
    for m in measures_:
        first.setdefault(m.benchmark, m)
    return list(first.values())
