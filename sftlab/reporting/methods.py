"""Method and training factors (the study's finding 4): full FT vs LoRA per task family, data-size and
epoch curves, and the mean gain per level of every swept hyper-parameter.

Each section has an ``analyse`` step (numbers: ``MethodComparison``, ``Curves``, ``Factors``) and a
``render`` step (``render``, ``render_curves``, ``render_factors``) that words, tabulates and plots them.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from sftlab.reporting.content import MAX_PANELS, Options, Section, Table, ci_fields, png, subplots
from sftlab.reporting.gains import varying_params
from sftlab.reporting.trials import Measure, TrialRow, headlines
from sftlab.stats import MeanCI, mean, mean_ci

if TYPE_CHECKING:
    import pandas as pd

FULL = "full"
KIND_TAG = "benchmark_kind.{}"  # optional trial tag sftlab.benchmark_kind.<benchmark>: the task family
EPOCH_AXIS = "checkpoint_epoch"
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


@dataclass
class MethodComparison:
    """Full FT − another method, paired by (base model, dataset): one record per method × family or metric."""

    confidence: float
    records: list[dict[str, Any]]
    applicable: bool = True  # False: the sweep did not train both full FT and another method

    @property
    def frame(self) -> pd.DataFrame:
        """tables/methods: level (family or metric), name, method, pairs, mean gains, diff CI, verdict."""
        import pandas as pd

        return pd.DataFrame.from_records(self.records)


def analyse(done: list[TrialRow], measures: list[Measure], options: Options) -> MethodComparison:
    methods = sorted({r.tag("method") for r in done} - {"", FULL})
    if not methods or not any(r.tag("method") == FULL for r in done):
        return MethodComparison(options.confidence, [], applicable=False)
    records: list[dict[str, Any]] = []
    families: dict[str, list[Measure]] = {}
    for m in headlines(measures):
        families.setdefault(family(done, m.benchmark), []).append(m)
    for other in methods:
        pairs = _pairs(done, other)
        groups = [("family", name, ms) for name, ms in families.items()] + [("metric", m.name, [m]) for m in measures]
        for level, name, ms in groups:
            full, oth, diff = _diffs(pairs, ms)
            ci = mean_ci(diff, options.confidence)
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
    return MethodComparison(options.confidence, records)


def render(result: MethodComparison) -> Section:
    section = Section("Full fine-tuning vs LoRA")
    section.text.append(
        "Paired by (base model, dataset): each pair's mean gain with full FT minus its mean gain with the other "
        f"method, then the mean difference over pairs with a {result.confidence:.0%} t interval. Task family = the "
        "benchmark's kind when trials record it (tag sftlab.benchmark_kind.<benchmark>), else the benchmark; a "
        "family's difference averages its benchmarks' headline metrics within each pair."
    )
    if not result.applicable:
        section.text.append("n/a: the sweep did not train both full FT and another method.")
        return section
    rows: dict[str, list[list[str]]] = {"family": [], "metric": []}
    for r in result.records:
        ci = _diff_ci(r)
        rows[r["level"]].append(
            [
                r["name"],
                r["method"],
                str(r["pairs"]),
                _f(r["mean_gain_full"]),
                _f(r["mean_gain_other"]),
                str(ci) if ci else "–",
                r["verdict"],
            ]
        )
    headers = ["{}", "vs", "pairs", "mean gain full", "mean gain other", "full − other [CI]", "verdict"]
    section.tables.append(
        Table([headers[0].format("task family"), *headers[1:]], rows["family"], caption="Per task family")
    )
    section.tables.append(
        Table(
            [headers[0].format("benchmark metric"), *headers[1:]],
            rows["metric"],
            caption="Per benchmark metric",
            in_markdown=len(rows["metric"]) <= 20,
        )
    )
    section.data["methods"] = result.frame
    return section


def _diff_ci(record: dict[str, Any]) -> MeanCI | None:
    """A record's difference CI back from its columns (``ci_fields`` of None has n = 0)."""
    if not record["diff_n"]:
        return None
    return MeanCI(record["diff_mean"], record["diff_ci_low"], record["diff_ci_high"], record["diff_n"])


def _m(values: list[float]) -> float:
    return float(np.mean(values)) if values else math.nan


def _f(value: float) -> str:
    return "–" if math.isnan(value) else f"{value:+.3g}"


def _param(run: TrialRow, name: str, default: str) -> str:
    return str(run.params.get(name, default))


def _level_key(value: str) -> tuple[int, float, str]:
    try:
        return (0, float(value), value)
    except ValueError:
        return (1, math.inf, value)  # "None" (all rows) after every number


def _level_label(value: str) -> str:
    return "all" if value in ("None", "") else value


@dataclass
class Curve:
    """Mean gain [CI] per (level, method, measure) along one axis: a swept param, or checkpoint epochs."""

    axis: str  # the param's name, or EPOCH_AXIS
    levels: list[str]
    cis: dict[tuple[str, str, str], MeanCI]

    def label(self, level: str) -> str:
        return level if self.axis == EPOCH_AXIS else _level_label(level)


@dataclass
class Curves:
    measures: list[Measure]
    swept: list[Curve]  # one per swept axis of CURVE_AXES
    epochs: Curve | None  # from checkpoint runs, when logged
    convergence: dict[str, MeanCI | None]  # headline measure -> change of gain over the last evaluated epoch

    @property
    def frame(self) -> pd.DataFrame:
        """tables/curves: axis, level, method, measure and the mean gain with its CI."""
        import pandas as pd

        return pd.DataFrame.from_records(
            [
                {"axis": c.axis, "level": c.label(lv), "method": me, "measure": mm, **ci_fields(ci)}
                for c in [*self.swept, *([self.epochs] if self.epochs else [])]
                for (lv, me, mm), ci in c.cis.items()
            ]
        )


def analyse_curves(done: list[TrialRow], measures: list[Measure], options: Options) -> Curves:
    """Gain against the swept data size and epochs, and per-epoch curves from checkpoint runs."""
    swept = []
    for axis in (axis for axis in CURVE_AXES if axis in varying_params(done)):
        levels = sorted({r.params.get(axis, "") for r in done}, key=_level_key)
        level_of = functools.partial(_param, name=axis, default="")
        swept.append(Curve(axis, levels, _curves(done, measures, levels, level_of, options.confidence)))
    series = _epoch_series(done)
    epochs, convergence = None, {}
    if series:
        levels = [str(e) for e in sorted({e for per in series.values() for e in per})]
        epochs = Curve(EPOCH_AXIS, levels, _curves(done, measures, levels, None, options.confidence, series))
        convergence = {m.name: _convergence(done, series, m, options.confidence) for m in headlines(measures)}
    return Curves(measures, swept, epochs, convergence)


def render_curves(result: Curves) -> Section:
    measures = result.measures
    section = Section("Data size and epochs")
    heads = headlines(measures)[:MAX_PANELS]
    if result.swept:
        section.text.append(
            "Swept "
            + " and ".join(CURVE_AXES[c.axis] for c in result.swept)
            + ": mean final gain per level and method with a t interval "
            "(other factors vary within each level)."
        )
    for c in result.swept:
        section.tables.append(_curve_table(c.cis, CURVE_AXES[c.axis], c.levels, measures, c.label))
        section.figures.append(_curve_plot(c.cis, c.levels, heads, CURVE_AXES[c.axis], c.label))
    if (epochs := result.epochs) is not None:
        section.text.append(
            "Per-epoch curves: checkpoint runs (one per evaluated epoch) plus each trial's final model at its "
            "last epoch; mean gain over trials with a t interval."
        )
        section.tables.append(_curve_table(epochs.cis, "epoch", epochs.levels, measures, epochs.label))
        section.figures.append(_curve_plot(epochs.cis, epochs.levels, heads, "epoch", epochs.label))
        section.text += [_convergence_text(name, ci) for name, ci in result.convergence.items()]
    if not result.swept and result.epochs is None:
        section.text.append(
            "The sweep varied neither training.max_rows nor training.epochs, and no checkpoint runs were logged."
        )
    if len(frame := result.frame):
        section.data["curves"] = frame
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
) -> MeanCI | None:
    """The change of gain between each trial's last two evaluated epochs, its mean and CI over trials."""
    changes = []
    for row in done:
        per = series.get(row.key, {})
        if len(per) >= 2:
            last, before = sorted(per)[-1], sorted(per)[-2]
            a, b = per[last].get(m.key("gain")), per[before].get(m.key("gain"))
            if a is not None and b is not None:
                changes.append(a - b)
    return mean_ci(changes, confidence)


def _convergence_text(name: str, ci: MeanCI | None) -> str:
    """A plateau when the CI of the last epoch's change covers 0."""
    if ci is None or not math.isfinite(ci.low):
        return f"{name}: too few trials with two evaluated epochs to judge convergence."
    state = "still rising" if ci.sign > 0 else "falling" if ci.sign < 0 else "no significant change (converged)"
    return f"{name}: gain change over the last evaluated epoch {ci} over {ci.n} trials: {state}."


@dataclass
class FactorLevel:
    factor: str  # "method" or a swept training param without its "training." prefix
    level: str
    trials: int
    cis: list[MeanCI | None]  # mean gain [CI] per measure, in ``Factors.measures`` order


@dataclass
class Factors:
    measures: list[Measure]
    levels: list[FactorLevel]


def analyse_factors(done: list[TrialRow], measures: list[Measure], options: Options) -> Factors:
    """Mean gain per level of the method and of every swept hyper-parameter."""
    factors: dict[str, Callable[[TrialRow], str]] = {"method": lambda r: r.tag("method")}
    for param in varying_params(done):
        if param not in NOT_FACTORS:
            factors[param.removeprefix("training.")] = functools.partial(_param, name=param, default="–")
    levels = []
    for name, level_of in factors.items():
        for level in sorted({level_of(r) for r in done}, key=_level_key):
            group = [r for r in done if level_of(r) == level]
            cis = [mean_ci((m.gain(r) for r in group), options.confidence) for m in measures]
            levels.append(FactorLevel(name, level, len(group), cis))
    return Factors(measures, levels)


def render_factors(result: Factors) -> Section:
    table = [
        [f"{f.factor} = {_level_label(f.level)}", str(f.trials), *(str(c) if c else "–" for c in f.cis)]
        for f in result.levels
    ]
    headers = ["factor", "trials", *(f"mean gain {m.name}" for m in result.measures)]
    text = [
        "Unpaired means over all finished trials at each level (other factors vary too); "
        "the paired comparisons are above."
    ]
    return Section("Method and hyper-parameters", text, [Table(headers, table, in_markdown=len(result.measures) <= 8)])
