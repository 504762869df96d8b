"""Gain table: every finished trial × benchmark, the gain over the base model with its CI; best trials."""

from __future__ import annotations

import math

from sftlab import metric_names
from sftlab.reporting.content import Section, Table
from sftlab.reporting.stats import fmt
from sftlab.reporting.trials import HEADLINE, Measure, TrialRow

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


def gain_cell(measure: Measure, row: TrialRow) -> str:
    """``+0.12 [+0.05, +0.19] *``: the gain, its paired-bootstrap CI when logged, * when the CI excludes 0."""
    gain = measure.gain(row)
    if gain is None:
        return "–"
    ci = measure.ci(row)
    if ci is None:
        return fmt(gain, signed=True)
    star = " *" if ci[0] > 0 or ci[1] < 0 else ""
    return f"{gain:+.3g} [{ci[0]:+.3g}, {ci[1]:+.3g}]{star}"


def gain_section(done: list[TrialRow], measures: list[Measure]) -> Section:
    import pandas as pd

    params = sorted(set(KEY_PARAMS) | set(varying_params(done)))
    headers = ["trial", "base model", "dataset", "method", *(p.removeprefix("training.") for p in params)]
    headers += ["data ppl", "train loss", *(f"gain {m.name}" for m in measures)]
    table, records = [], []
    for row in sorted(done, key=lambda r: r.label):
        cells = [row.label, row.tag("base_model"), row.tag("dataset"), row.tag("method")]
        cells += [row.params.get(p, "–") for p in params]
        cells += [fmt(row.metric(metric_names.profile("ppl"))), fmt(row.metric(metric_names.train("final_loss")))]
        table.append(cells + [gain_cell(m, row) for m in measures])
        for m in measures:
            ci = m.ci(row)
            gain = m.gain(row)
            records.append(
                {
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
                    "gain": _num(gain),
                    "gain_ci_low": ci[0] if ci else math.nan,
                    "gain_ci_high": ci[1] if ci else math.nan,
                    "significant": bool(ci and (ci[0] > 0 or ci[1] < 0)),
                }
            )
    text = [
        "Gain = fine-tuned score − base-model score on the same items. Brackets: the paired bootstrap CI over "
        f"items logged with the headline metric ({HEADLINE}); * marks a CI that excludes 0. Every metric of every "
        "trial is in trials.csv / trials.parquet; this table is tables/gains.csv in long form."
    ]
    section = Section("Gains per trial", text, [Table(headers, table, in_markdown=False, collapsed=len(table) > 40)])
    section.data["gains"] = pd.DataFrame.from_records(records)
    return section


def _num(value: float | None) -> float:
    return math.nan if value is None else value


def best_section(done: list[TrialRow], measures: list[Measure]) -> Section:
    table = []
    for m in measures:
        scored = sorted((r for r in done if m.gain(r) is not None), key=lambda r: -(m.gain(r) or 0.0))
        for rank, row in enumerate(scored[:BEST], 1):
            table.append(
                [m.name, str(rank), row.label, fmt(m.value(row, "eval")), fmt(m.value(row, "base")), gain_cell(m, row)]
            )
    text = [f"The {BEST} trials with the largest gain on each benchmark metric."]
    return Section(
        "Best trials per benchmark", text, [Table(["benchmark", "rank", "trial", "score", "base", "gain [CI]"], table)]
    )
