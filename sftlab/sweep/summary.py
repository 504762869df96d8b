"""The few lines a sweep ends with: its headline, before the pointers to the report and MLflow.

A user who ran a sweep first wants to know whether anything worked: the largest gains whose CI
clears zero, the trials that got significantly worse, and (printed by the caller) the failures
with their causes. Only gains with a CI count: a gain without one is not called better or worse.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sftlab import metric_names
from sftlab.reporting.trials import runs_by_key
from sftlab.spec.grid import Trial
from sftlab.tracking.runs import Tracker


@dataclass(frozen=True)
class Gain:
    label: str
    benchmark: str
    value: float
    low: float
    high: float

    def __str__(self) -> str:
        return f"{self.label} on {self.benchmark}: {self.value:+.3f} [{self.low:+.3f}, {self.high:+.3f}]"


def score_gains(tracker: Tracker, trials: Sequence[Trial]) -> list[Gain]:
    """Every finished trial's score gain with a CI, per benchmark (one paged search)."""
    finished, _ = runs_by_key(tracker)
    gains = []
    for trial in trials:
        run = finished.get(trial.key)
        if run is None:
            continue
        metrics = run.data.metrics
        for name, value in metrics.items():
            parsed = metric_names.parse_benchmark_metric(name)
            if parsed is None or parsed.kind != "gain" or parsed.metric != "score":
                continue
            low, high = (metrics.get(bound) for bound in metric_names.ci_bounds(name))
            if low is not None and high is not None:
                gains.append(Gain(trial.label, parsed.benchmark, value, low, high))
    return gains


def headline(gains: Sequence[Gain], top: int = 3) -> list[str]:
    """Best significant gains and the trials that got significantly worse (CI entirely below 0)."""
    better = sorted((g for g in gains if g.low > 0), key=lambda g: -g.value)
    worse = sorted((g for g in gains if g.high < 0), key=lambda g: g.value)
    if not gains:
        return ["gains: none with a confidence interval (no trial finished its evaluation)"]
    lines = [f"best gains (CI above 0): {len(better)} of {len(gains)} trial x benchmark gains"]
    lines += [f"  {g}" for g in better[:top]]
    lines.append(f"got worse (CI below 0): {len(worse)}")
    lines += [f"  {g}" for g in worse[:top]]
    shown = min(top, len(better)) + min(top, len(worse))
    if len(better) + len(worse) > shown:
        lines.append(f"  ({len(better) + len(worse) - shown} more in the report)")
    return lines
