"""Layer analysis: which layers' weight change tracks the gains (the study's finding 2: the middle ones).

Unit: the trial (each has its own weights). LoRA and full fine-tuning move weights by very
different amounts, and so do base models, so ρ is stratified: ranks are taken within each
(base model, method) group before pooling. Otherwise "LoRA changes little and gains little"
alone would read as a layer effect.

``analyse`` computes the correlations (``LayerAnalysis``, ``.frame`` as a DataFrame); ``render``
words, tabulates and plots them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from sftlab import metric_names
from sftlab.reporting.content import MAX_PANELS, Options, Section, Table, corr_fields, png, short, subplots
from sftlab.reporting.trials import Measure, TrialRow, column, headlines
from sftlab.stats import Corr, adjust, alpha, quiet, rank_correlations, strongest
from sftlab.weight_diff import DEPTHS, depth_bucket

if TYPE_CHECKING:
    import pandas as pd

DEPTH_TITLES = {"bottom": "early (bottom third)", "middle": "middle third", "top": "late (top third)"}
TOTAL = "all weights"
POOLED = "all base models"
REL_CHANGE = "rel_change"  # ||ΔW||/||W||, the change analysed
BANDS_UP_TO = 4  # base models whose CI bands are drawn in the layer profile (more only overlap)


def _depth(d: str) -> str:
    return f"depth: {DEPTH_TITLES[d]}"


def _layer(metric: str) -> int | None:
    """The block of a weights/layer_<i>/rel_change metric (None: another metric)."""
    found = metric_names.parse_weights(metric)
    return found.layer if found is not None and found.stat == REL_CHANGE else None


def _layer_count(rows: list[TrialRow]) -> int:
    return 1 + max((i for r in rows for k in r.metrics if (i := _layer(k)) is not None), default=-1)


def _depth_values(rows: list[TrialRow], counts: dict[str, int]) -> dict[str, np.ndarray]:
    """Each trial's change per depth third: the logged aggregate, else the mean of its layers' changes
    (thirds of its own base model's stack)."""
    out = {_depth(d): column(rows, metric_names.weights_depth(d, REL_CHANGE)) for d in DEPTHS}
    for model, layers in counts.items():
        mine = np.array([r.tag("base_model") == model for r in rows])
        subset = [r for r in rows if r.tag("base_model") == model]
        for d in DEPTHS:
            members = [i for i in range(layers) if depth_bucket(i, layers) == d]
            if not members or not subset:
                continue
            with quiet():
                fallback = np.nanmean(
                    np.stack([column(subset, metric_names.weights_layer(i, REL_CHANGE)) for i in members]), axis=0
                )
            logged = out[_depth(d)][mine]
            out[_depth(d)][mine] = np.where(np.isfinite(logged), logged, fallback)
    return out


def _weights(rows: list[TrialRow], counts: dict[str, int], per_layer: bool) -> dict[str, np.ndarray]:
    x = _depth_values(rows, counts)
    x[TOTAL] = column(rows, metric_names.weights_total(REL_CHANGE))
    if per_layer:
        x.update(
            {f"layer {i}": column(rows, metric_names.weights_layer(i, REL_CHANGE)) for i in range(_layer_count(rows))}
        )
    return x


@dataclass
class LayerAnalysis:
    """Stratified ρ of each weight-change measure with each gain, per scope (pooled, then per base model)."""

    measures: list[Measure]
    resamples: int
    confidence: float
    trials: int  # trials that logged per-layer weight change
    counts: dict[str, int] = field(default_factory=dict)  # layers per base model
    results: dict[str, dict[tuple[str, str], Corr | None]] = field(default_factory=dict)  # scope -> (weights, measure)
    labels: dict[str, list[str]] = field(default_factory=dict)  # scope -> weight measures, in table order

    @property
    def frame(self) -> pd.DataFrame:
        """One row per scope × weight measure × gain measure (tables/layers)."""
        import pandas as pd

        records = []
        for scope, corrs in self.results.items():
            for (weights, m_name), c in corrs.items():
                layer = int(weights.split()[1]) if weights.startswith("layer ") else math.nan
                records.append(
                    {
                        "scope": scope,
                        "weights": weights,
                        "layer": layer,
                        "measure": m_name,
                        **corr_fields(c),
                        "significant": bool(c and c.significant),
                    }
                )
        return pd.DataFrame.from_records(records)


def analyse(done: list[TrialRow], measures: list[Measure], options: Options) -> LayerAnalysis:
    rows = [r for r in done if any(_layer(k) is not None for k in r.metrics)]
    analysis = LayerAnalysis(measures, options.resamples, options.confidence, len(rows))
    if len(rows) < 4:
        return analysis
    models = sorted({r.tag("base_model") for r in rows})
    counts = {m: _layer_count([r for r in rows if r.tag("base_model") == m]) for m in models}
    same_depth = len(set(counts.values())) == 1  # per-layer pooling only when layer i means the same depth
    scopes: dict[str, tuple[list[TrialRow], list[str]]] = {POOLED: (rows, ["base_model", "method"])}
    if len(models) > 1:
        scopes.update({m: ([r for r in rows if r.tag("base_model") == m], ["method"]) for m in models})
    analysis.counts = counts
    for scope, (members, strata_tags) in scopes.items():
        x = _weights(members, counts, per_layer=scope != POOLED or same_depth)
        y = {m.name: m.gains(members) for m in measures}
        strata = np.array(["|".join(r.tag(t) for t in strata_tags) for r in members])
        analysis.results[scope] = adjust(
            rank_correlations(
                x, y, strata=strata, confidence=options.confidence, resamples=options.resamples, seed=options.seed
            )
        )
        analysis.labels[scope] = list(x)
    return analysis


def render(analysis: LayerAnalysis) -> Section:
    measures, results, labels = analysis.measures, analysis.results, analysis.labels
    section = Section("Layer change vs gain")
    section.text.append(
        "Relative weight change ||ΔW||/||W|| per layer and per depth third against the gain, one point per trial. "
        "Spearman ρ stratified by base model × method (ranks within each group, then pooled), percentile-bootstrap "
        f"CI ({analysis.resamples} resamples within groups); p_adj = Holm-adjusted p over each table; "
        f"* = p_adj < {alpha(analysis.confidence):g}."
    )
    if analysis.trials < 4:
        section.text.append("n/a (too few trials): fewer than 4 finished trials logged per-layer weight change.")
        return section
    for m in measures:
        section.text.append(_verdict(results[POOLED], m))
    section.tables.append(_table(results[POOLED], labels[POOLED], measures, "all base models (stratified)"))
    for scope in results:
        if scope != POOLED:
            section.tables.append(
                _table(results[scope], labels[scope], measures, f"base model {scope}", collapsed=True)
            )
    per_model = {s: results[s] for s in results if s != POOLED} or {POOLED: results[POOLED]}
    shown = headlines(measures)[:MAX_PANELS]
    if any(k[0].startswith("layer ") for r in per_model.values() for k in r):
        section.figures.append(_profile_plot(per_model, analysis.counts, shown))
    section.data["layers"] = analysis.frame
    return section


def _verdict(corrs: dict[tuple[str, str], Corr | None], m: Measure) -> str:
    depths = {DEPTH_TITLES[d]: corrs.get((_depth(d), m.name)) for d in DEPTHS}
    best = strongest(depths)
    if best is None:
        return f"{m.name}: depth n/a (too few trials)."
    name, corr = best
    others = "; ".join(f"{d} {short(c, mark=False)}" for d, c in depths.items() if d != name and c is not None)
    verdict = "significant" if corr.significant else "not significant"
    layer = strongest({k[0]: c for k, c in corrs.items() if k[1] == m.name and k[0].startswith("layer ")})
    layer_text = f"; strongest single layer: {layer[0]} ({short(layer[1], mark=False)})" if layer else ""
    return f"{m.name}: the {name} correlates most: {corr} ({verdict}); {others}{layer_text}."


def _table(
    corrs: dict[tuple[str, str], Corr | None],
    labels: list[str],
    measures: list[Measure],
    caption: str,
    collapsed: bool = False,
) -> Table:
    rows = [[label, *(short(corrs.get((label, m.name))) for m in measures)] for label in labels]
    return Table(
        ["weights", *(m.name for m in measures)],
        rows,
        caption=caption,
        collapsed=collapsed,
        in_markdown=not collapsed,
        markdown_limit=len(DEPTHS) + 1,
    )


def _profile_plot(
    per_model: dict[str, dict[tuple[str, str], Corr | None]], counts: dict[str, int], measures: list[Measure]
) -> bytes:
    """ρ of each layer's change with the gain against relative depth, one line per base model (CI bands for a few)."""
    fig, axes = subplots(len(measures), width=4.6, height=3.4)
    for ax, m in zip(axes, measures, strict=True):
        ax.axvspan(1 / 3, 2 / 3, color="0.92", label="middle third")
        for scope, corrs in per_model.items():
            layers = counts.get(scope) or max(counts.values())
            found = [(i, c) for i in range(layers) if (c := corrs.get((f"layer {i}", m.name))) is not None]
            if not found:
                continue
            depth = np.array([(i + 0.5) / layers for i, _ in found])  # layer centre as a share of the stack
            rho = np.array([c.rho for _, c in found])
            line = ax.plot(depth, rho, marker="o", markersize=3, label=scope)[0]
            if len(per_model) <= BANDS_UP_TO:
                ax.fill_between(
                    depth, [c.low for _, c in found], [c.high for _, c in found], color=line.get_color(), alpha=0.12
                )
        ax.axhline(0, color="0.5", linewidth=0.8)
        ax.set_xlim(0, 1)
        ax.set_ylim(-1.05, 1.05)
        ax.set_xlabel("relative depth (0 = first layer, 1 = last)", fontsize=8)
        ax.set_ylabel("ρ (layer weight change, gain)", fontsize=8)
        ax.set_title(m.name, fontsize=9)
        ax.legend(fontsize=6)
    return png(fig)
