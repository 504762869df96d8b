"""Method and training factors (the study's finding 4): full FT vs LoRA per task family, data-size and
epoch curves, and the mean gain per level of every swept hyper-parameter."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from sftlab.reporting.content import MAX_PANELS, Section, Table, ci_fields, png, subplots
from sftlab.reporting.gains import varying_params
from sftlab.reporting.trials import Measure, TrialRow, headlines
from sftlab.stats import MeanCI, mean, mean_ci

FULL = "full"
KIND_TAG = "benchmark_kind.{}"  # optional trial tag sftlab.benchmark_kind.<benchmark>: the task family
CURVE_AXES = {"training.max_rows": "training rows (max_rows)", "training.epochs": "epochs"}
NOT_FACTORS = {"training.seed"}  # seeds vary by design; a mean gain per seed says nothing


def family(done: list[TrialRow], benchmark: str) -> str:
    """A benchmark's task family: its logged kind when trials record one, else the benchmark itself."""
    return next((kind for r in done if (kind := r.tag(KIND_TAG.format(benchmark)))), benchmark)


def _pairs(done: list[TrialRow], other: str) -> list[tuple[list[TrialRow], list[TrialRow]]]:
    """(full trials, ``other`` trials) of each (base model, dataset) that trained with both."""
    cells: dict[tuple[str, str], dict[str, list[TrialRow]]] = {}
    for row in done:
        cells.setdefault((row.tag("base_model"), row.tag("dataset")), {}).setdefault(row.tag("method"), []).append(row)
    return [(c[FULL], c[other]) for c in cells.values() if FULL in c and other in c]


def _diffs(
    pairs: list[tuple[list[TrialRow], list[TrialRow]]], measures: list[Measure]
) -> tuple[list[float], list[float], list[float]]:
    """Per pair: full mean gain, other mean gain and their difference, averaged over ``measures``."""
    full, other, diff = [], [], []
    for a, b in pairs:
        fa = [mean(m.gain(r) for r in a) for m in measures]
        fb = [mean(m.gain(r) for r in b) for m in measures]
        both = [(x, y) for x, y in zip(fa, fb, strict=True) if x is not None and y is not None]
        if both:
            full.append(float(np.mean([x for x, _ in both])))
            other.append(float(np.mean([y for _, y in both])))
            diff.append(full[-1] - other[-1])
    return full, other, diff


def _verdict(ci: MeanCI | None, other: str) -> str:
    if ci is None or not math.isfinite(ci.low):
        return "n/a (fewer than 2 pairs)"
    return f"{FULL} better" if ci.sign > 0 else f"{other} better" if ci.sign < 0 else "no significant difference"


def method_section(done: list[TrialRow], measures: list[Measure], confidence: float) -> Section:
    import pandas as pd

    methods = sorted({r.tag("method") for r in done} - {"", FULL})
    section = Section("Full fine-tuning vs LoRA")
    section.text.append(
        "Paired by (base model, dataset): each pair's mean gain with full FT minus its mean gain with the other "
        f"method, then the mean difference over pairs with a {confidence:.0%} t interval. Task family = the "
        "benchmark's kind when trials record it (tag sftlab.benchmark_kind.<benchmark>), else the benchmark; a "
        "family's difference averages its benchmarks' headline metrics within each pair."
    )
    if not methods or not any(r.tag("method") == FULL for r in done):
        section.text.append("n/a: the sweep did not train both full FT and another method.")
        return section
    records: list[dict[str, Any]] = []
    family_rows: list[list[str]] = []
    metric_rows: list[list[str]] = []
    heads = headlines(measures)
    families: dict[str, list[Measure]] = {}
    for m in heads:
        families.setdefault(family(done, m.benchmark), []).append(m)
    for other in methods:
        pairs = _pairs(done, other)
        groups = [("family", name, ms) for name, ms in families.items()] + [("metric", m.name, [m]) for m in measures]
        for level, name, ms in groups:
            full, oth, diff = _diffs(pairs, ms)
            ci = mean_ci(diff, confidence)
            row = [name, other, str(len(diff)), _f(full), _f(oth), str(ci) if ci else "–", _verdict(ci, other)]
            (family_rows if level == "family" else metric_rows).append(row)
            records.append(
                {
                    "level": level,
                    "name": name,
                    "method": other,
                    "pairs": len(diff),
                    "mean_gain_full": _m(full),
                    "mean_gain_other": _m(oth),
                    **{f"diff_{k}": v for k, v in ci_fields(ci).items()},
                    "verdict": _verdict(ci, other),
                }
            )
    headers = ["{}", "vs", "pairs", "mean gain full", "mean gain other", "full − other [CI]", "verdict"]
    section.tables.append(
        Table([headers[0].format("task family"), *headers[1:]], family_rows, caption="Per task family")
    )
    section.tables.append(
        Table(
            [headers[0].format("benchmark metric"), *headers[1:]],
            metric_rows,
            caption="Per benchmark metric",
            in_markdown=len(metric_rows) <= 20,
        )
    )
    section.data["methods"] = pd.DataFrame.from_records(records)
    return section


def _m(values: list[float]) -> float:
    return float(np.mean(values)) if values else math.nan


def _f(values: list[float]) -> str:
    return f"{np.mean(values):+.3g}" if values else "–"


def _param(run: TrialRow, name: str, default: str) -> str:
    return str(run.params.get(name, default))


def _level_key(value: str) -> tuple[int, float, str]:
    try:
        return (0, float(value), value)
    except ValueError:
        return (1, math.inf, value)  # "None" (all rows) after every number


def _level_label(value: str) -> str:
    return "all" if value in ("None", "") else value


def curve_section(done: list[TrialRow], measures: list[Measure], confidence: float) -> Section:
    """Gain against the swept data size and epochs, and per-epoch curves from checkpoint runs."""
    import pandas as pd

    section = Section("Data size and epochs")
    varied = [axis for axis in CURVE_AXES if axis in varying_params(done)]
    heads = headlines(measures)[:MAX_PANELS]
    records = []
    if varied:
        section.text.append(
            "Swept "
            + " and ".join(CURVE_AXES[a] for a in varied)
            + ": mean final gain per level and method with a t interval "
            "(other factors vary within each level)."
        )
    for axis in varied:
        levels = sorted({r.params.get(axis, "") for r in done}, key=_level_key)
        curves = _curves(done, measures, levels, functools.partial(_param, name=axis, default=""), confidence)
        section.tables.append(_curve_table(curves, CURVE_AXES[axis], levels, measures, _level_label))
        section.figures.append(_curve_plot(curves, levels, heads, CURVE_AXES[axis], _level_label))
        records += [
            {"axis": axis, "level": _level_label(lv), "method": me, "measure": mm, **ci_fields(ci)}
            for (lv, me, mm), ci in curves.items()
        ]
    series = _epoch_series(done)
    if series:
        epochs = sorted({e for per in series.values() for e in per})
        curves = _curves(done, measures, [str(e) for e in epochs], None, confidence, series)
        section.text.append(
            "Per-epoch curves: checkpoint runs (one per evaluated epoch) plus each trial's final model at its "
            "last epoch; mean gain over trials with a t interval."
        )
        section.tables.append(_curve_table(curves, "epoch", [str(e) for e in epochs], measures, str))
        section.figures.append(_curve_plot(curves, [str(e) for e in epochs], heads, "epoch", str))
        section.text += [_convergence(done, series, m, confidence) for m in heads]
        records += [
            {"axis": "checkpoint_epoch", "level": lv, "method": me, "measure": mm, **ci_fields(ci)}
            for (lv, me, mm), ci in curves.items()
        ]
    if not varied and not series:
        section.text.append(
            "The sweep varied neither training.max_rows nor training.epochs, and no checkpoint runs were logged."
        )
    if records:
        section.data["curves"] = pd.DataFrame.from_records(records)
    return section


def _epoch_series(done: list[TrialRow]) -> dict[str, dict[int, dict[str, float]]]:
    """trial key -> epoch -> metrics, for trials with checkpoint runs (the final model fills its last epoch)."""
    out = {}
    for row in done:
        if not row.epochs:
            continue
        per = dict(row.epochs)
        last = row.params.get("training.epochs", "")
        if last.isdigit() and int(last) not in per:
            per[int(last)] = row.metrics
        out[row.key] = per
    return out


def _curves(
    done: list[TrialRow],
    measures: list[Measure],
    levels: list[str],
    level_of: Callable[[TrialRow], str] | None,
    confidence: float,
    series: dict[str, dict[int, dict[str, float]]] | None = None,
) -> dict[tuple[str, str, str], MeanCI]:
    """(level, method, measure) -> mean gain [CI]; levels from a param, or epochs of ``series``."""
    out = {}
    for method in sorted({r.tag("method") for r in done}):
        rows = [r for r in done if r.tag("method") == method]
        for level in levels:
            for m in measures:
                if series is None:
                    assert level_of is not None
                    values = [m.gain(r) for r in rows if level_of(r) == level]
                else:
                    values = [
                        series[r.key][int(level)].get(m.key("gain"))
                        for r in rows
                        if r.key in series and int(level) in series[r.key]
                    ]
                if (ci := mean_ci(values, confidence)) is not None:
                    out[level, method, m.name] = ci
    return out


def _curve_table(
    curves: dict[tuple[str, str, str], MeanCI],
    axis: str,
    levels: list[str],
    measures: list[Measure],
    label: Callable[[str], str],
) -> Table:
    methods = sorted({me for _, me, _ in curves})
    rows = []
    for level in levels:
        for method in methods:
            cells = [curves.get((level, method, m.name)) for m in measures]
            if any(cells):
                n = max(c.n for c in cells if c)
                rows.append([label(level), method, str(n), *(str(c) if c else "–" for c in cells)])
    return Table(
        [axis, "method", "trials", *(f"gain {m.name}" for m in measures)], rows, caption=f"Mean gain [CI] by {axis}"
    )


def _curve_plot(
    curves: dict[tuple[str, str, str], MeanCI],
    levels: list[str],
    measures: list[Measure],
    axis: str,
    label: Callable[[str], str],
) -> bytes:
    fig, axes = subplots(len(measures))
    methods = sorted({me for _, me, _ in curves})
    xs = np.arange(len(levels))
    for ax, m in zip(axes, measures, strict=True):
        for method in methods:
            found = [(i, c) for i, lv in enumerate(levels) if (c := curves.get((lv, method, m.name)))]
            if not found:
                continue
            x = xs[[i for i, _ in found]]
            y = np.array([c.mean for _, c in found])
            low = np.array([c.low if math.isfinite(c.low) else c.mean for _, c in found])
            high = np.array([c.high if math.isfinite(c.high) else c.mean for _, c in found])
            ax.errorbar(x, y, yerr=[y - low, high - y], marker="o", markersize=4, capsize=3, label=method or "?")
        ax.set_xticks(xs, [label(lv) for lv in levels], fontsize=8)
        ax.axhline(0, color="0.7", linewidth=0.7)
        ax.set_xlabel(axis, fontsize=8)
        ax.set_ylabel(f"mean gain {m.name}", fontsize=8)
        ax.set_title(m.name, fontsize=9)
        ax.legend(fontsize=6)
    return png(fig)


def _convergence(
    done: list[TrialRow], series: dict[str, dict[int, dict[str, float]]], m: Measure, confidence: float
) -> str:
    """The change of gain between each trial's last two evaluated epochs: a plateau when its CI covers 0."""
    changes = []
    for row in done:
        per = series.get(row.key, {})
        if len(per) >= 2:
            last, before = sorted(per)[-1], sorted(per)[-2]
            a, b = per[last].get(m.key("gain")), per[before].get(m.key("gain"))
            if a is not None and b is not None:
                changes.append(a - b)
    ci = mean_ci(changes, confidence)
    if ci is None or not math.isfinite(ci.low):
        return f"{m.name}: too few trials with two evaluated epochs to judge convergence."
    state = "still rising" if ci.sign > 0 else "falling" if ci.sign < 0 else "no significant change (converged)"
    return f"{m.name}: gain change over the last evaluated epoch {ci} over {ci.n} trials: {state}."


def factors_section(done: list[TrialRow], measures: list[Measure], confidence: float) -> Section:
    """Mean gain per level of the method and of every swept hyper-parameter."""
    factors: dict[str, Callable[[TrialRow], str]] = {"method": lambda r: r.tag("method")}
    for param in varying_params(done):
        if param not in NOT_FACTORS:
            factors[param.removeprefix("training.")] = functools.partial(_param, name=param, default="–")
    table = []
    for name, level_of in factors.items():
        for level in sorted({level_of(r) for r in done}, key=_level_key):
            group = [r for r in done if level_of(r) == level]
            cells = [mean_ci((m.gain(r) for r in group), confidence) for m in measures]
            table.append([f"{name} = {_level_label(level)}", str(len(group)), *(str(c) if c else "–" for c in cells)])
    headers = ["factor", "trials", *(f"mean gain {m.name}" for m in measures)]
    text = [
        "Unpaired means over all finished trials at each level (other factors vary too); "
        "the paired comparisons are above."
    ]
    return Section("Method and hyper-parameters", text, [Table(headers, table, in_markdown=len(measures) <= 8)])
