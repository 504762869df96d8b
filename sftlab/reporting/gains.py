"""Gain table: every finished trial × benchmark, the gain over the base model with its CI; best trials.

``analyse`` collects the numbers (one row per trial × benchmark metric, in ``Gains.frame``);
``render`` lays them out as the per-trial table; ``analyse_best`` / ``render_best`` do the same for
the best trials per benchmark.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sftlab import metric_names
from sftlab.reporting.content import Options, Section, Table, fmt
from sftlab.reporting.trials import HEADLINE, Measure, TrialRow

if TYPE_CHECKING:
    import pandas as pd

KEY_PARAMS = ("training.learning_rate", "training.epochs")
BEST = 3  # trials listed per benchmark


def varying_params(rows: list[TrialRow]) -> list[str]:
    """Training params whose value differs between finished trials: the sweep's axes (method has its own tag)."""
    values: dict[str, set[str]] = {}
    for row in rows:
        for name, value in row.params.items():
            if name.startswith("training.") and name != "training.method":
                values.setdefault(name, set()).add(value)
    return sorted(name for name, seen in values.items() if len(seen) > 1)


@dataclass
class TrialGains:
    """One trial as the gain table shows it: what it is, and its gain record per measure."""

    label: str
    tags: tuple[str, str, str]  # base model, dataset, method
    params: list[str]  # the values of ``Gains.params`` ("–" where not logged)
    ppl: float | None
    final_loss: float | None
    records: list[dict[str, Any]]  # one per measure, the columns of ``Gains.frame``


@dataclass
class Gains:
    measures: list[Measure]
    params: list[str]  # training params shown: the key ones and the swept ones
    trials: list[TrialGains]  # sorted by label

    @property
    def frame(self) -> pd.DataFrame:
        """Long form: one row per trial × measure, gain with its CI (tables/gains)."""
        import pandas as pd

        return pd.DataFrame.from_records([r for t in self.trials for r in t.records])


def _record(row: TrialRow, m: Measure) -> dict[str, Any]:
    ci = m.ci(row)
    return {
        "trial": row.label,
        "key": row.key,
        "run_id": row.run_id,
        "base_model": row.tag("base_model"),
        "dataset": row.tag("dataset"),
        "method": row.tag("method"),
        "measure": m.name,
        "benchmark": m.benchmark,
        "metric": m.metric,
        "eval": _num(m.value(row, "eval")),
        "base": _num(m.value(row, "base")),
        "gain": _num(m.gain(row)),
        "gain_ci_low": ci[0] if ci else math.nan,
        "gain_ci_high": ci[1] if ci else math.nan,
        "significant": bool(ci and (ci[0] > 0 or ci[1] < 0)),
    }


def analyse(done: list[TrialRow], measures: list[Measure], options: Options) -> Gains:
    params = sorted(set(KEY_PARAMS) | set(varying_params(done)))
    trials = [
        TrialGains(
            row.label,
            (row.tag("base_model"), row.tag("dataset"), row.tag("method")),
            [row.params.get(p, "–") for p in params],
            row.metric(metric_names.profile("ppl")),
            row.metric(metric_names.train("final_loss")),
            [_record(row, m) for m in measures],
        )
        for row in sorted(done, key=lambda r: r.label)
    ]
    return Gains(measures, params, trials)


def gain_text(record: dict[str, Any]) -> str:
    """``+0.12 [+0.05, +0.19] *``: the gain, its paired-bootstrap CI when logged, * when the CI excludes 0."""
    gain, low, high = record["gain"], record["gain_ci_low"], record["gain_ci_high"]
    if not math.isfinite(gain):
        return "–"
    if math.isnan(low):
        return fmt(gain, signed=True)
    return f"{gain:+.3g} [{low:+.3g}, {high:+.3g}]{' *' if record['significant'] else ''}"


def render(result: Gains) -> Section:
    headers = ["trial", "base model", "dataset", "method", *(p.removeprefix("training.") for p in result.params)]
    headers += ["data ppl", "train loss", *(f"gain {m.name}" for m in result.measures)]
    table = [
        [t.label, *t.tags, *t.params, fmt(t.ppl), fmt(t.final_loss), *(gain_text(r) for r in t.records)]
        for t in result.trials
    ]
    text = [
        "Gain = fine-tuned score − base-model score on the same items. Brackets: the paired bootstrap CI over "
        f"items logged with the headline metric ({HEADLINE}); * marks a CI that excludes 0. Every metric of every "
        "trial is in trials.csv / trials.parquet; this table is tables/gains.csv in long form."
    ]
    section = Section("Gains per trial", text, [Table(headers, table, in_markdown=False, collapsed=len(table) > 40)])
    section.data["gains"] = result.frame
    return section


def _num(value: float | None) -> float:
    return math.nan if value is None else value


@dataclass
class Best:
    """Per measure, its ``BEST`` trials by gain (records as in ``Gains.frame``), best first."""

    ranked: dict[str, list[dict[str, Any]]]


def analyse_best(done: list[TrialRow], measures: list[Measure], options: Options) -> Best:
    ranked: dict[str, list[dict[str, Any]]] = {}
    for m in measures:
        scored = sorted((r for r in done if m.gain(r) is not None), key=lambda r: -(m.gain(r) or 0.0))
        ranked[m.name] = [_record(row, m) for row in scored[:BEST]]
    return Best(ranked)


def render_best(result: Best) -> Section:
    table = [
        [name, str(rank), r["trial"], fmt(r["eval"]), fmt(r["base"]), gain_text(r)]
        for name, records in result.ranked.items()
        for rank, r in enumerate(records, 1)
    ]
    text = [f"The {BEST} trials with the largest gain on each benchmark metric."]
    return Section(
        "Best trials per benchmark", text, [Table(["benchmark", "rank", "trial", "score", "base", "gain [CI]"], table)]
    )
