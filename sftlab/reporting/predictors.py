"""Predictors of gain: Spearman ρ of every data-profile measure with the gains, pooled and per base model.

``analyse`` computes the correlations (``PredictorAnalysis``, ``.frame`` as a DataFrame); ``render``
ranks, words and plots them.

The study's finding 1 (arXiv 2506.14681): lower perplexity of the training data under the base
model predicts larger gains, better than length, similarity to the benchmark or tokenizer fit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from sftlab import metric_names
from sftlab.reporting.content import MAX_PANELS, Options, Section, Table, corr_fields, png, short, subplots
from sftlab.reporting.profiles import Unit, group_of, metric_for, predictors, title, unit_matrix, units
from sftlab.reporting.trials import Measure, TrialRow, headlines
from sftlab.stats import EXACT_MAX_N, Corr, adjust, alpha, rank_correlations

if TYPE_CHECKING:
    import pandas as pd

POOLED = "all base models"
PPL = metric_names.profile("ppl")
MARKDOWN_RANKS = 10  # predictors listed in the terminal summary


@dataclass
class Predictors:
    """ρ of each (predictor, measure), per scope (pooled or one base model)."""

    names: list[str]
    corrs: dict[str, dict[tuple[str, str], Corr | None]]  # scope -> (predictor, measure name) -> ρ

    def ranked(self, scope: str, measures: list[Measure]) -> list[tuple[str, float]]:
        """Predictors with their mean |ρ| over the measures where defined: most significant measures
        first, then by mean |ρ| (a mean alone lets a noise measure outrank one that predicts a few benchmarks)."""
        scores = []
        for name in self.names:
            corrs = [c for m in measures if (c := self.corrs[scope].get((name, m.name)))]
            if corrs:
                scores.append((name, sum(c.significant for c in corrs), float(np.mean([abs(c.rho) for c in corrs]))))
        return [(name, mean_rho) for name, _, mean_rho in sorted(scores, key=lambda item: (-item[1], -item[2]))]


def correlate(
    all_units: list[Unit], names: list[str], measures: list[Measure], resamples: int, seed: int, confidence: float
) -> Predictors:
    """Pooled and per-model tables; each table is one family for the Holm adjustment (all its predictors × measures)."""
    models = sorted({u.base_model for u in all_units})
    scopes = {POOLED: all_units}
    if len(models) > 1:
        scopes.update({model: [u for u in all_units if u.base_model == model] for model in models})
    out: dict[str, dict[tuple[str, str], Corr | None]] = {}
    for scope, group in scopes.items():
        x, y = unit_matrix(group, names, measures)
        wanted = {(name, m.name): (metric_for(name, m.benchmark), m.name) for name in names for m in measures}
        pairs = list(dict.fromkeys(wanted.values()))
        found = adjust(rank_correlations(x, y, pairs, confidence=confidence, resamples=resamples, seed=seed))
        out[scope] = {key: found[pair] for key, pair in wanted.items()}
    return Predictors(names, out)


@dataclass
class PredictorAnalysis:
    """The units, the predictors found and (with enough of both) their correlations with the gains."""

    units: list[Unit]
    names: list[str]
    measures: list[Measure]
    resamples: int
    confidence: float
    result: Predictors | None  # None: fewer than 4 units or no predictor logged

    @property
    def frame(self) -> pd.DataFrame:
        """One row per scope × predictor × measure: ρ, its CI, p, p_adj (tables/predictors)."""
        import pandas as pd

        corrs = self.result.corrs if self.result else {}
        return pd.DataFrame.from_records(
            [
                {
                    "scope": scope,
                    "predictor": name,
                    "title": title(name),
                    "group": group_of(name),
                    "measure": m_name,
                    **corr_fields(c),
                    "significant": bool(c and c.significant),
                }
                for scope, found in corrs.items()
                for (name, m_name), c in found.items()
            ]
        )


def analyse(done: list[TrialRow], measures: list[Measure], options: Options) -> PredictorAnalysis:
    all_units, names = units(done), predictors(done)
    enough = bool(names) and len(all_units) >= 4
    result = (
        correlate(all_units, names, measures, options.resamples, options.seed, options.confidence) if enough else None
    )
    return PredictorAnalysis(all_units, names, measures, options.resamples, options.confidence, result)


def render(analysis: PredictorAnalysis) -> Section:
    measures, result = analysis.measures, analysis.result
    section = Section("Predictors of gain (data profile)")
    section.text.append(
        f"Unit: one profiled (base model, dataset) pair and its mean gain over its finished trials "
        f"({len(analysis.units)} units): a profile is measured once per pair, so counting every trial would count "
        "the same data point several times. Spearman ρ with a percentile-bootstrap CI over units "
        f"({analysis.resamples} resamples); p from the t approximation (exact permutation p up to {EXACT_MAX_N} "
        "units); p_adj = Holm-adjusted p over all predictors × benchmark metrics of one table (family-wise error). "
        f"* / significant: p_adj < {alpha(analysis.confidence):g}. Benchmark-similarity "
        "predictors are read for the benchmark whose gain they predict."
    )
    if result is None:
        section.text.append("n/a (too few trials): fewer than 4 profiled units or no profile/* metrics logged.")
        return section
    ranked = result.ranked(POOLED, measures)
    section.tables.append(_ranked_table(result, ranked, measures))
    for m in measures:
        section.text.append(_verdict(result, m))
    section.tables.append(
        _detail_table(result, POOLED, measures, "ρ per predictor and benchmark metric, all base models")
    )
    for scope in result.corrs:
        if scope != POOLED:
            section.tables.append(_detail_table(result, scope, measures, f"base model {scope} only", collapsed=True))
    top = [name for name, _ in ranked[:1]]
    plotted = ([PPL] if PPL in result.names else []) + [n for n in top if n != PPL]
    for name in plotted:
        section.figures.append(_scatter(analysis.units, name, headlines(measures)[:MAX_PANELS], result))
    section.data["predictors"] = analysis.frame
    return section


def _ranked_table(result: Predictors, ranked: list[tuple[str, float]], measures: list[Measure]) -> Table:
    rows = []
    for rank, (name, score) in enumerate(ranked, 1):
        corrs = {m.name: c for m in measures if (c := result.corrs[POOLED].get((name, m.name)))}
        hits = [f"{m} ({'+' if c.rho > 0 else '−'})" for m, c in corrs.items() if c.significant]
        best = max(corrs.items(), key=lambda item: abs(item[1].rho))
        rows.append(
            [
                str(rank),
                title(name),
                group_of(name),
                f"{score:.2f}",
                ", ".join(hits) or "none",
                f"{best[0]}: {short(best[1], mark=False)} p_adj = {best[1].p_adj:.2g}",
            ]
        )
    headers = ["rank", "predictor", "group", "mean |ρ|", "significant on", "strongest"]
    caption = (
        "Predictors ranked by the number of benchmark metrics they significantly predict, "
        "then by mean |ρ| (all base models pooled)"
    )
    return Table(headers, rows, caption=caption, markdown_limit=MARKDOWN_RANKS)


def _verdict(result: Predictors, m: Measure) -> str:
    corrs = {name: c for name in result.names if (c := result.corrs[POOLED].get((name, m.name)))}
    if not corrs:
        return f"{m.name}: n/a (too few trials)."
    name, best = max(corrs.items(), key=lambda item: abs(item[1].rho))
    verdict = "significant" if best.significant else "not significant"
    ppl = corrs.get(PPL)
    ppl_text = f"; perplexity {ppl}" if ppl is not None and name != PPL else ""
    return f"{m.name}: strongest predictor {title(name)} {best} ({verdict}){ppl_text}."


def _detail_table(
    result: Predictors, scope: str, measures: list[Measure], caption: str, collapsed: bool = False
) -> Table:
    rows = [[title(name), *(short(result.corrs[scope].get((name, m.name))) for m in measures)] for name in result.names]
    return Table(
        ["predictor", *(m.name for m in measures)], rows, in_markdown=False, caption=caption, collapsed=collapsed
    )


def _scatter(all_units: list[Unit], name: str, measures: list[Measure], result: Predictors) -> bytes:
    """Mean gain of each unit against one predictor, per base model, with the pooled least-squares line."""
    fig, axes = subplots(len(measures))
    models = sorted({u.base_model for u in all_units})
    for ax, m in zip(axes, measures, strict=True):
        xs = np.array([u.profile.get(metric_for(name, m.benchmark), math.nan) for u in all_units])
        ys = np.array([u.gain(m) for u in all_units])
        keep = np.isfinite(xs) & np.isfinite(ys)
        log_x = bool(keep.any() and (xs[keep] > 0).all() and xs[keep].max() > 10 * xs[keep].min())
        for model in models:
            mine = keep & np.array([u.base_model == model for u in all_units])
            ax.scatter(xs[mine], ys[mine], s=18, label=model or "?")
        if keep.sum() >= 3 and np.ptp(xs[keep]) > 0:
            fx = np.log(xs[keep]) if log_x else xs[keep]
            slope, intercept = np.polyfit(fx, ys[keep], 1)
            grid = np.linspace(fx.min(), fx.max(), 50)
            ax.plot(
                np.exp(grid) if log_x else grid,
                intercept + slope * grid,
                color="0.3",
                linewidth=1,
                label="least squares",
            )
        if log_x:
            ax.set_xscale("log")  # perplexities of different base models can span orders of magnitude
        ax.axhline(0, color="0.7", linewidth=0.7)
        ax.set_xlabel(title(name), fontsize=8)
        ax.set_ylabel(f"mean gain {m.name}", fontsize=8)
        ax.set_title(f"{m.name}: {short(result.corrs[POOLED].get((name, m.name)))}", fontsize=9)
        ax.legend(fontsize=6)
    return png(fig)
