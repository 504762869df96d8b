"""Predict SFT gains before training, from data profiles alone (``sftlab predict SPEC``).

One ridge regression per benchmark (its headline metric) of the gain of a (base model, dataset)
pair on the pair's data-profile measures plus a one-hot base model: regularised, linear and
small enough to read, since a study has only as many points as it has profiled pairs (the paper:
12 models × 10 datasets). Honesty comes from the cross-validation: leave one *dataset* out (all
its base models at once), because the question asked is how well it ranks data it has not seen,
scored against mean-gain baselines that know nothing of the data (per base model, and overall); the
report says plainly when the ridge does not beat the better of them by a clear margin. The fitted
model is JSON (features, scaling, coefficients), never a pickle, so any tool can read it and no
code runs when it is loaded.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sftlab.errors import SftlabError
from sftlab.reporting.profiles import Unit, features, metric_for, predictors, units
from sftlab.reporting.trials import Measure, TrialRow, headlines, measures

if TYPE_CHECKING:
    from sftlab.tracking.runs import Tracker

VERSION = 1
PREDICTOR_FILE = "predictor.json"
REPORT_TAG = "sftlab.report_built_ms"  # on the run holding a report's artifacts: when it was built
ALPHAS = tuple(
    float(a) for a in np.logspace(-2, 6, 33)
)  # ridge penalties tried (standardised features); 1e6 ≈ the mean
MIN_SKILL = 0.05  # "beats the baseline": a CV MAE at least 5% below the better mean baseline, not a tie won by noise
MIN_UNITS = 5  # fewer profiled pairs than this: no predictor for the benchmark
MIN_COVERAGE = 0.8  # a feature must be logged for this share of the training units (others are imputed)
MODEL = "base_model="  # one-hot feature prefix


@dataclass
class CVResult:
    scheme: str
    folds: int
    mae: float
    rmse: float
    baseline_mae: float  # per-base-model mean gain of the training folds
    baseline_rmse: float
    mean_mae: float  # overall mean gain of the training folds
    predicted: list[float] = field(default_factory=list)  # out-of-fold predictions, in unit order
    actual: list[float] = field(default_factory=list)

    @property
    def best_baseline_mae(self) -> float:
        """The better of the two mean baselines (on noise, per-model means overfit and the global mean wins)."""
        return min(self.baseline_mae, self.mean_mae)

    @property
    def skill(self) -> float:
        """1 - MAE / best baseline MAE: > 0 is better than the baselines, 1 is perfect."""
        return 1 - self.mae / self.best_baseline_mae if self.best_baseline_mae > 0 else math.nan

    @property
    def beats_baseline(self) -> bool:
        return bool(self.skill >= MIN_SKILL)


@dataclass
class Ridge:
    """A fitted ridge over named raw features: z = (transform(x) - center) / scale, gain = z·coef + intercept."""

    features: list[str]
    log: list[bool]
    center: list[float]
    scale: list[float]
    coef: list[float]
    intercept: float
    alpha: float

    def predict(self, x: np.ndarray, columns: list[str]) -> np.ndarray:
        """Predictions for rows of ``x``, whose columns are named ``columns``."""
        if not self.features:
            return np.full(len(x), self.intercept)
        index = [columns.index(c) for c in self.features]
        return _standardise(x[:, index], self.log, self.center, self.scale) @ np.asarray(self.coef) + self.intercept


@dataclass(kw_only=True)
class Target(Ridge):
    """The ridge of one benchmark metric, with its cross-validated error and the ranges it was fitted on."""

    measure: str
    benchmark: str
    units: int
    cv: CVResult
    low: list[float] = field(default_factory=list)  # each feature's training range (raw values)
    high: list[float] = field(default_factory=list)

    def raw(self, profile: dict[str, float], base_model: str, known_models: list[str]) -> np.ndarray:
        """Feature values of one (profile, base model); NaN where missing (imputed as the training mean)."""
        known = base_model in known_models
        out = []
        for name in self.features:
            if name.startswith(MODEL):
                out.append((1.0 if name == MODEL + base_model else 0.0) if known else math.nan)
            else:
                value = profile.get(metric_for(name, self.benchmark))
                out.append(float(value) if value is not None and math.isfinite(value) else math.nan)
        return np.asarray(out, dtype=float)

    def missing(self, x: np.ndarray) -> list[str]:
        return [
            name
            for name, v in zip(self.features, x, strict=True)
            if not math.isfinite(v) and not name.startswith(MODEL)
        ]

    def outside(self, x: np.ndarray) -> list[str]:
        """Features beyond the range the study saw: the prediction is an extrapolation there."""
        return [
            f"{name} {v:.4g} (study {lo:.4g}–{hi:.4g})"
            for name, v, lo, hi in zip(self.features, x, self.low, self.high, strict=True)
            if math.isfinite(v) and not name.startswith(MODEL) and not lo <= v <= hi
        ]


@dataclass
class Predictor:
    experiment: str
    created: str
    base_models: list[str]
    targets: dict[str, Target]
    skipped: dict[str, str] = field(default_factory=dict)  # measure -> why it has no predictor
    version: int = VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, allow_nan=True)

    @classmethod
    def from_json(cls, text: str) -> Predictor:
        data = json.loads(text)
        if data.get("version") != VERSION:
            raise SftlabError(f"predictor format version {data.get('version')} is not {VERSION}: rebuild the report")
        targets = {k: Target(**{**t, "cv": CVResult(**t["cv"])}) for k, t in data["targets"].items()}
        return cls(data["experiment"], data["created"], data["base_models"], targets, data.get("skipped", {}))

    def predict(self, measure: str, profile: dict[str, float], base_model: str) -> tuple[float, list[str], list[str]]:
        """Predicted gain, the features that were missing (imputed) and those outside the study's range."""
        target = self.targets[measure]
        x = target.raw(profile, base_model, self.base_models)
        return float(target.predict(x[None, :], target.features)[0]), target.missing(x), target.outside(x)


# -- ridge ------------------------------------------------------------------------------------


def _standardise(x: np.ndarray, log: list[bool], center: list[float], scale: list[float]) -> np.ndarray:
    x = x.copy()
    logged = np.asarray(log, dtype=bool)
    with np.errstate(invalid="ignore", divide="ignore"):
        x[:, logged] = np.log(np.where(x[:, logged] > 0, x[:, logged], np.nan))
    z = (x - np.asarray(center)) / np.asarray(scale)
    return np.where(np.isfinite(z), z, 0.0)  # missing: the training mean


def ridge_loo(z: np.ndarray, y: np.ndarray, alphas: tuple[float, ...] = ALPHAS) -> tuple[float, np.ndarray, float]:
    """Ridge with an unpenalised intercept; the penalty chosen by exact leave-one-out error (closed form).

    ``z`` must have zero-mean columns. Returns (alpha, coef, intercept): what scikit-learn's
    ``RidgeCV(alphas, fit_intercept=True)`` selects and fits on the same matrix.
    """
    n = len(y)
    y_mean = float(y.mean())
    u, s, vt = np.linalg.svd(z, full_matrices=False)
    uty = u.T @ (y - y_mean)
    best: tuple[float, float, np.ndarray] | None = None
    for alpha in alphas:
        shrink = s**2 / (s**2 + alpha)
        fitted = u @ (shrink * uty) + y_mean
        leverage = 1.0 / n + (u**2 * shrink).sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            loo = np.where(1 - leverage > 1e-12, (y - fitted) / (1 - leverage), np.inf)
        error = float(np.mean(loo**2))
        if best is None or error < best[0]:
            coef = vt.T @ (s / (s**2 + alpha) * uty)
            best = (error, alpha, coef)
    assert best is not None
    return best[1], best[2], y_mean


def fit_ridge(x: np.ndarray, y: np.ndarray, names: list[str]) -> Ridge:
    """Choose usable features, transform and standardise them, fit the ridge. Everything from training rows only."""
    keep, logs, centers, scales = [], [], [], []
    for j, name in enumerate(names):
        col = x[:, j]
        finite = col[np.isfinite(col)]
        if len(finite) < max(2, MIN_COVERAGE * len(col)):
            continue
        # Positive measures spanning more than a decade (perplexities across base models) enter as logs.
        log = bool(not name.startswith(MODEL) and (finite > 0).all() and finite.max() > 10 * finite.min())
        values = np.log(finite) if log else finite
        if values.std() == 0:
            continue
        keep.append(j)
        logs.append(log)
        centers.append(float(values.mean()))
        scales.append(float(values.std()))
    if not keep:
        return Ridge([], [], [], [], [], float(y.mean()), math.nan)
    z = _standardise(x[:, keep], logs, centers, scales)
    shift = z.mean(axis=0)  # non-zero only where imputed entries moved the mean; the ridge needs centred columns
    alpha, coef, intercept = ridge_loo(z - shift, y)
    return Ridge([names[j] for j in keep], logs, centers, scales, coef.tolist(), intercept - float(shift @ coef), alpha)


def _design(group: list[Unit], names: list[str], benchmark: str, models: list[str]) -> tuple[np.ndarray, list[str]]:
    columns = names + [MODEL + m for m in models]
    rows = [
        np.concatenate([features(u.profile, names, benchmark), [float(u.base_model == m) for m in models]])
        for u in group
    ]
    return np.vstack(rows) if rows else np.zeros((0, len(columns))), columns


def cross_validate(x: np.ndarray, y: np.ndarray, columns: list[str], group: list[Unit]) -> CVResult:
    """Leave one dataset out (every base model's unit of it at once) when there are 3+ datasets, else one unit."""
    datasets = [u.dataset for u in group]
    by_dataset = len(set(datasets)) >= 3
    keys = datasets if by_dataset else [str(i) for i in range(len(group))]
    predicted, baseline, overall = np.empty(len(y)), np.empty(len(y)), np.empty(len(y))
    for key in sorted(set(keys)):
        test = np.array([k == key for k in keys])
        train = ~test
        predicted[test] = fit_ridge(x[train], y[train], columns).predict(x[test], columns)
        overall[test] = y[train].mean()
        for i in np.flatnonzero(test):
            same = train & np.array([u.base_model == group[i].base_model for u in group])
            baseline[i] = y[same].mean() if same.any() else y[train].mean()
    err = predicted - y
    return CVResult(
        scheme="leave one dataset out" if by_dataset else "leave one unit out",
        folds=len(set(keys)),
        mae=float(np.abs(err).mean()),
        rmse=float(np.sqrt((err**2).mean())),
        baseline_mae=float(np.abs(baseline - y).mean()),
        baseline_rmse=float(np.sqrt(((baseline - y) ** 2).mean())),
        mean_mae=float(np.abs(overall - y).mean()),
        predicted=predicted.tolist(),
        actual=y.tolist(),
    )


def fit(done: list[TrialRow], experiment: str = "", targets: list[Measure] | None = None) -> Predictor:
    """One ridge per benchmark headline metric, with its cross-validated error, from finished trials."""
    all_units, names = units(done), predictors(done)
    models = sorted({u.base_model for u in all_units})
    predictor = Predictor(experiment, datetime.now(UTC).isoformat(timespec="seconds"), models, {})
    for m in targets if targets is not None else headlines(measures(done)):
        group = [u for u in all_units if math.isfinite(u.gain(m))]
        if len(group) < MIN_UNITS or not names:
            predictor.skipped[m.name] = (
                f"{len(group)} profiled (base model, dataset) pairs with this gain; need {MIN_UNITS}"
            )
            continue
        x, columns = _design(group, names, m.benchmark, models)
        y = np.array([u.gain(m) for u in group])
        cv = cross_validate(x, y, columns, group)
        ridge = fit_ridge(x, y, columns)
        index = [columns.index(c) for c in ridge.features]
        with np.errstate(all="ignore"):
            low, high = np.nanmin(x[:, index], axis=0).tolist(), np.nanmax(x[:, index], axis=0).tolist()
        predictor.targets[m.name] = Target(
            **asdict(ridge), measure=m.name, benchmark=m.benchmark, units=len(group), cv=cv, low=low, high=high
        )
    return predictor


# -- finding and ranking --------------------------------------------------------------------


def latest_report_run(tracker: Tracker) -> Any | None:
    """The run holding the most recently built report of the experiment (a sweep or report run)."""
    runs = list(tracker.search(f"tags.`{REPORT_TAG}` LIKE '%'"))
    return max(runs, key=lambda r: int(r.data.tags.get(REPORT_TAG, "0") or 0)) if runs else None


def load_latest(tracker: Tracker) -> Predictor | None:
    """The predictor logged with the experiment's latest report, if that report fitted one."""
    import tempfile

    run = latest_report_run(tracker)
    if run is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = tracker.download(run.info.run_id, f"report/{PREDICTOR_FILE}", tmp)
        except Exception:  # noqa: BLE001 - an older report without a predictor: fit one instead
            return None
        return Predictor.from_json(Path(path).read_text(encoding="utf-8"))


def fit_from_experiment(tracker: Tracker, experiment: str) -> Predictor:
    from sftlab.reporting.trials import finished, runs_by_key, trial_row

    done_runs, _ = runs_by_key(tracker)
    rows = finished([trial_row(key, key, done_runs, {}) for key in done_runs])
    return fit(rows, experiment)


@dataclass(frozen=True)
class Ranked:
    measure: str
    base_model: str
    rank: int
    dataset: str
    gain: float
    uncertainty: float  # the CV RMSE of this benchmark's predictor
    missing: tuple[str, ...]
    outside: tuple[str, ...] = ()


def rank(predictor: Predictor, profiles: dict[tuple[str, str], dict[str, float]], measures_: list[str]) -> list[Ranked]:
    """Datasets per (benchmark metric, base model), best predicted gain first."""
    out = []
    for measure in measures_:
        target = predictor.targets[measure]
        for model in sorted({m for m, _ in profiles}):
            scored = [(d, *predictor.predict(measure, p, model)) for (m, d), p in profiles.items() if m == model]
            scored.sort(key=lambda item: -item[1])
            out += [
                Ranked(measure, model, i, d, g, target.cv.rmse, tuple(miss), tuple(far))
                for i, (d, g, miss, far) in enumerate(scored, 1)
            ]
    return out


# -- sftlab predict SPEC ----------------------------------------------------------------------


def predictor_for(tracker: Tracker, experiment: str, refit: bool = False) -> tuple[Predictor, str]:
    """The experiment's latest report's predictor, else one fitted now from its trials; and where it came from."""
    if not refit and (found := load_latest(tracker)) is not None:
        return found, f"predictor from the latest report of experiment {experiment!r} (built {found.created})"
    fitted = fit_from_experiment(tracker, experiment)
    return fitted, f"predictor fitted now from the finished trials of experiment {experiment!r}"


def format_ranking(predictor: Predictor, ranked: list[Ranked], source: str) -> str:
    lines = [source]
    for measure in dict.fromkeys(r.measure for r in ranked):
        cv = predictor.targets[measure].cv
        verdict = (
            "beats the baseline"
            if cv.beats_baseline
            else "does NOT beat the baseline: this ranking is no better than the mean gain"
        )
        lines.append("")
        lines.append(
            f"{measure}: predicted gain ± CV RMSE. CV MAE {cv.mae:.3g} vs {cv.best_baseline_mae:.3g} for the better "
            f"mean baseline ({cv.scheme}, {cv.folds} folds, {predictor.targets[measure].units} units): {verdict}"
        )
        for model in dict.fromkeys(r.base_model for r in ranked if r.measure == measure):
            known = (
                ""
                if model in predictor.base_models
                else " (not in the study: predicted with the study-average base model)"
            )
            lines.append(f"  {model}{known}")
            for r in (r for r in ranked if r.measure == measure and r.base_model == model):
                note = f"  (imputed: {', '.join(r.missing)})" if r.missing else ""
                note += f"  (extrapolated, the ± does not hold: {'; '.join(r.outside)})" if r.outside else ""
                lines.append(f"    {r.rank}. {r.dataset:<24} {r.gain:+.4g} ± {r.uncertainty:.2g}{note}")
    return "\n".join(lines)


def write_ranking_csv(ranked: list[Ranked], path: Path, predictor: Predictor) -> None:
    import csv

    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            [
                "measure",
                "base_model",
                "rank",
                "dataset",
                "predicted_gain",
                "uncertainty_cv_rmse",
                "beats_baseline",
                "imputed",
                "extrapolated",
            ]
        )
        for r in ranked:
            beats = predictor.targets[r.measure].cv.beats_baseline
            writer.writerow(
                [
                    r.measure,
                    r.base_model,
                    r.rank,
                    r.dataset,
                    r.gain,
                    r.uncertainty,
                    beats,
                    ";".join(r.missing),
                    ";".join(r.outside),
                ]
            )
