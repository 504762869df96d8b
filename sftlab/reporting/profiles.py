"""Data-profile measures as predictors of gain, and the units they are measured on.

A profile belongs to a (base model, dataset) pair, not to a trial: every trial of the pair logs
the same ``profile/*`` values. Correlating them with per-trial gains would count one data point
once per seed or hyper-parameter setting and overstate significance, so predictors are analysed on
*units*, one per profiled pair, with the pair's mean gain over its finished trials.

Benchmark-specific measures (``profile/sim/<bench>/*``, ``profile/contaminated/<bench>``) become
one predictor each, read for the benchmark whose gain is predicted ("similarity to the benchmark
being scored").
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from sftlab import metric_names
from sftlab.reporting.trials import Measure, TrialRow

PREFIX = metric_names.PROFILE
OWN = "<benchmark>"  # stands for the benchmark being predicted in a predictor's metric name
TITLES = {
    "profile/ppl": "perplexity (token-weighted)",
    "profile/ppl_mean_example": "perplexity (mean per example)",
    "profile/ppl_p50": "perplexity (median example)",
    "profile/ppl_p90": "perplexity (90th pct example)",
    "profile/tokens_mean": "example length (tokens)",
    "profile/prompt_tokens_mean": "prompt length (tokens)",
    "profile/response_tokens_mean": "response length (tokens)",
    "profile/truncated_share": "share truncated",
    "profile/chars_per_token": "tokenizer fit: chars per token",
    "profile/unk_rate": "tokenizer fit: unknown-token rate",
    "profile/byte_fallback_rate": "tokenizer fit: byte-fallback rate",
    "profile/embed_pairwise_distance": "diversity: embedding spread",
    "profile/exact_dup_rate": "diversity: exact duplicates",
    "profile/near_dup_rate": "diversity: near duplicates",
    metric_names.profile_similarity(OWN, "embed_centroid_cos"): "benchmark similarity: embedding centroid cosine",
    metric_names.profile_similarity(OWN, "embed_max_sim"): "benchmark similarity: nearest-row cosine",
    metric_names.profile_contamination(OWN): "benchmark contamination (items)",
}
# Display groups of profile measures, by the measure's name (``profile/<measure>``).
GROUPS: tuple[tuple[str, Callable[[str], bool]], ...] = (
    ("perplexity", lambda m: m.startswith("ppl")),
    ("tokenizer fit", lambda m: m in ("chars_per_token", "unk_rate", "byte_fallback_rate")),
    ("diversity", lambda m: m.startswith(("distinct_", "exact_dup", "near_dup", "embed_pairwise"))),
    ("length", lambda m: any(word in m for word in ("tokens", "turns", "truncated", "overlong"))),
)


SIMILARITY, OTHER = "benchmark similarity", "data quality and size"
GROUP_ORDER = [GROUPS[0][0], SIMILARITY, *(name for name, _ in GROUPS[1:]), OTHER]  # as the report lists them


def group_of(predictor: str) -> str:
    found = metric_names.parse_profile(predictor)
    if isinstance(found, metric_names.ProfileSimilarity | metric_names.ProfileContamination):
        return SIMILARITY
    measure = found.measure if isinstance(found, metric_names.ProfileMeasure) else predictor
    return next((name for name, matches in GROUPS if matches(measure)), OTHER)


def title(predictor: str) -> str:
    if predictor in TITLES:
        return TITLES[predictor]
    found = metric_names.parse_profile(predictor)
    if isinstance(found, metric_names.ProfileSimilarity) and found.benchmark == OWN and found.ngram is not None:
        return f"benchmark similarity: {found.ngram}-gram overlap"
    if isinstance(found, metric_names.ProfileMeasure) and found.distinct is not None:
        return f"diversity: distinct-{found.distinct}"
    return predictor.removeprefix(PREFIX).replace("_", " ")


def generic(metric: str) -> str | None:
    """The predictor a logged profile metric belongs to (None: not a predictor)."""
    # Sampling bookkeeping and CI bounds describe the measurement, not the data.
    if not metric_names.is_profile(metric) or metric_names.is_ci(metric) or metric_names.is_sample_size(metric):
        return None
    found = metric_names.parse_profile(metric)
    if isinstance(found, metric_names.ProfileSimilarity):
        return metric_names.profile_similarity(OWN, found.measure)
    if isinstance(found, metric_names.ProfileContamination):
        return metric_names.profile_contamination(OWN)
    return metric


def metric_for(predictor: str, benchmark: str) -> str:
    """The logged metric of ``predictor`` when predicting gains on ``benchmark``."""
    return predictor.replace(OWN, benchmark)


def predictors(rows: list[TrialRow]) -> list[str]:
    """Every predictor some finished trial logged, sorted by group then name."""
    found = {p for r in rows for k in r.metrics if (p := generic(k))}
    order = GROUP_ORDER
    return sorted(found, key=lambda p: (order.index(group_of(p)), p))


def features(metrics: dict[str, float], names: list[str], benchmark: str) -> np.ndarray:
    """The predictors' values for one profile and target benchmark, NaN where not logged."""
    out = []
    for name in names:
        value = metrics.get(metric_for(name, benchmark))
        out.append(float(value) if value is not None and math.isfinite(value) else math.nan)
    return np.asarray(out, dtype=float)


@dataclass
class Unit:
    """One profiled (base model, dataset) pair and its finished trials."""

    base_model: str
    dataset: str
    rows: list[TrialRow]

    @property
    def profile(self) -> dict[str, float]:
        """The pair's profile metrics (identical on its trials; the first trial's are used)."""
        return {k: v for k, v in self.rows[0].metrics.items() if metric_names.is_profile(k)}

    def gain(self, measure: Measure) -> float:
        """Mean gain over the pair's trials (NaN when none logged it)."""
        values = [g for r in self.rows if (g := measure.gain(r)) is not None]
        return float(np.mean(values)) if values else math.nan


def units(rows: list[TrialRow]) -> list[Unit]:
    """Finished trials grouped by (base model, dataset, profile run): one unit per measured profile."""
    grouped: dict[tuple[str, str, str], list[TrialRow]] = {}
    for row in rows:
        if any(metric_names.is_profile(k) for k in row.metrics):
            grouped.setdefault((row.tag("base_model"), row.tag("dataset"), row.tag("profile_run_id")), []).append(row)
    return [Unit(model, dataset, members) for (model, dataset, _), members in sorted(grouped.items())]


def unit_matrix(
    group: list[Unit], names: list[str], measures: list[Measure]
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Predictor metrics (benchmark-specific ones once per benchmark) and mean gains, one row per unit."""
    profiles = [u.profile for u in group]
    metric_names = sorted({metric_for(p, m.benchmark) for p in names for m in measures})
    x = {name: np.array([p.get(name, math.nan) for p in profiles], dtype=float) for name in metric_names}
    y = {m.name: np.array([u.gain(m) for u in group], dtype=float) for m in measures}
    return x, y
