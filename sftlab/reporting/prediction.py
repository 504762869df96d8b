"""The report's "predict before training" section: the fitted gain predictor and its honest error.

``analyse`` fits the predictor (``gain_model.Predictor``; ``cv_frame`` its errors as a DataFrame);
``render`` words, tabulates and plots it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from sftlab.reporting.content import MAX_PANELS, Options, Section, Table, png, subplots
from sftlab.reporting.gain_model import MIN_SKILL, MODEL, PREDICTOR_FILE, Predictor, fit
from sftlab.reporting.profiles import title
from sftlab.reporting.trials import Measure, TrialRow, headlines

if TYPE_CHECKING:
    import pandas as pd

TOP_COEFFICIENTS = 4


def analyse(done: list[TrialRow], measures: list[Measure], options: Options) -> Predictor:
    """The fitted gain predictor (one ridge per headline metric) with its cross-validated error."""
    return fit(done, options.experiment, headlines(measures))


def cv_frame(predictor: Predictor) -> pd.DataFrame:
    """tables/predictor_cv: per target, units, features, ridge α and the CV errors against the baselines."""
    import pandas as pd

    return pd.DataFrame.from_records(
        [
            {
                "measure": name,
                "units": target.units,
                "features": len(target.features),
                "alpha": target.alpha,
                "cv_scheme": target.cv.scheme,
                "cv_mae": target.cv.mae,
                "baseline_mae": target.cv.baseline_mae,
                "mean_mae": target.cv.mean_mae,
                "cv_rmse": target.cv.rmse,
                "baseline_rmse": target.cv.baseline_rmse,
                "skill": target.cv.skill,
                "beats_baseline": target.cv.beats_baseline,
            }
            for name, target in predictor.targets.items()
        ]
    )


def render(predictor: Predictor) -> Section:
    section = Section("Predicting gain before training")
    section.text.append(
        "One ridge regression per benchmark (headline metric) of a (base model, dataset) pair's mean gain on its "
        "data-profile measures and a one-hot base model; features standardised (logged when positive and spanning "
        "over a decade), the penalty chosen by leave-one-out error inside each training set. Error: cross-validated, "
        "leaving one dataset out at a time (what predicting an unseen dataset needs), against two baselines fitted "
        "on the same folds: each base model's mean gain, and the overall mean gain. The predictor beats the baseline "
        f"when its CV MAE is at least {MIN_SKILL:.0%} below the better baseline's (skill ≥ {MIN_SKILL}). "
        f"Fitted coefficients: {PREDICTOR_FILE} (JSON); "
        "`sftlab predict SPEC` ranks a spec's candidate datasets with it."
    )
    rows = []
    for name, target in predictor.targets.items():
        cv = target.cv
        verdict = "beats the baseline" if cv.beats_baseline else "does NOT beat the baseline: do not rank data with it"
        rows.append(
            [
                name,
                str(target.units),
                str(len(target.features)),
                f"{target.alpha:.3g}",
                cv.scheme,
                f"{cv.mae:.3g}",
                f"{cv.baseline_mae:.3g}",
                f"{cv.mean_mae:.3g}",
                f"{cv.rmse:.3g}",
                f"{cv.skill:+.2f}",
                verdict,
            ]
        )
        section.text.append(
            f"{name}: cross-validated MAE {cv.mae:.3g} vs {cv.best_baseline_mae:.3g} for the better mean baseline: "
            f"the predictor {verdict}. "
            f"Largest standardised coefficients: {_top(target.features, target.coef)}."
        )
    for name, why in predictor.skipped.items():
        section.text.append(f"{name}: no predictor ({why}).")
    headers = [
        "benchmark",
        "units",
        "features",
        "ridge α",
        "CV",
        "CV MAE",
        "per-model-mean MAE",
        "global-mean MAE",
        "CV RMSE",
        "skill",
        "verdict",
    ]
    section.tables.append(Table(headers, rows))
    shown = [t for t in predictor.targets.values()][:MAX_PANELS]
    if shown:
        section.figures.append(_cv_plot(shown))
    if predictor.targets:
        section.data["predictor_cv"] = cv_frame(predictor)
    return section


def _top(names: list[str], coef: list[float]) -> str:
    if not names:
        return "none (no usable feature)"
    order = np.argsort(-np.abs(coef))[:TOP_COEFFICIENTS]
    return ", ".join(f"{_name(names[i])} {coef[i]:+.3g}" for i in order)


def _name(feature: str) -> str:
    return f"base model {feature.removeprefix(MODEL)}" if feature.startswith(MODEL) else title(feature)


def _cv_plot(targets: list) -> bytes:
    """Out-of-fold predictions against the actual mean gains, with the identity line."""
    fig, axes = subplots(len(targets), width=3.8, height=3.4)
    for ax, target in zip(axes, targets, strict=True):
        actual, predicted = np.asarray(target.cv.actual), np.asarray(target.cv.predicted)
        ax.scatter(actual, predicted, s=16)
        low, high = float(min(actual.min(), predicted.min())), float(max(actual.max(), predicted.max()))
        ax.plot([low, high], [low, high], color="0.4", linewidth=0.8, label="perfect")
        ax.set_xlabel("actual mean gain", fontsize=8)
        ax.set_ylabel("predicted (held-out)", fontsize=8)
        ax.set_title(f"{target.measure}: MAE {target.cv.mae:.2g} vs {target.cv.best_baseline_mae:.2g}", fontsize=9)
        ax.legend(fontsize=6)
    return png(fig)
