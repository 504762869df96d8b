"""Planned trials as report rows, read from MLflow in one paged search per report."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Protocol

from sftlab.tracking import TAG_ERROR, TAG_STAGE, TAG_TRIAL_KEY, Tracker

if TYPE_CHECKING:
    from mlflow.entities import Run

GAIN = re.compile(r"^gain/(?P<benchmark>.+)/(?P<metric>[^/]+)$")
TRIAL_QUERY = f"tags.`{TAG_STAGE}` = 'trial'"
NEWEST_FIRST = ["attributes.start_time DESC"]


class TrialRef(Protocol):
    """A planned trial as the report needs it (``sftlab.grid.Trial`` is one)."""

    @property
    def key(self) -> str: ...

    @property
    def label(self) -> str: ...


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


def finished(rows: list[TrialRow]) -> list[TrialRow]:
    return [r for r in rows if r.status == "finished"]


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


def measures(rows: list[TrialRow]) -> list[Measure]:
    """Every benchmark metric with a logged gain; exact match first, the headline score."""
    found = {Measure(m["benchmark"], m["metric"]) for r in rows for k in r.metrics if (m := GAIN.match(k))}
    return sorted(found, key=lambda m: (m.benchmark, m.metric != "exact_match", m.metric))

