"""Predicting gains before training: the ridge itself, and ``sftlab predict`` end to end through the CLI.

The end-to-end test learns from a synthetic study of the quickstart's two tiny base models whose
gains fall with data perplexity (gain = −0.02·ppl + noise), then profiles the example datasets
for real (tiny models, no training) and must rank them by their measured perplexity.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from sftlab.reporting.gain_model import MODEL, REPORT_TAG, ridge_loo
from sftlab.tracking.runs import Tracker
from tests.support.helpers import EXAMPLES, run_cli

STUDY = "tiny-study"
MODELS = {
    "tiny-llama-chat": "tiny:llama?hidden=64&layers=4&seed=0&pretrain=chat",
    "tiny-qwen-mixed": "tiny:qwen2?hidden=64&layers=4&seed=1&pretrain=mixed",
}
BENCH = "gsm8k-tiny"


def test_ridge_matches_scikit_learn_ridgecv():
    linear_model = pytest.importorskip("sklearn.linear_model")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 6))
    y = x @ np.array([1.0, -2.0, 0.0, 0.0, 0.5, 0.0]) + rng.normal(0, 0.5, 30)
    z = (x - x.mean(0)) / x.std(0)
    alphas = tuple(float(a) for a in np.logspace(-2, 3, 11))
    alpha, coef, intercept = ridge_loo(z, y, alphas)
    reference = linear_model.RidgeCV(alphas=alphas, fit_intercept=True).fit(z, y)
    assert alpha == pytest.approx(reference.alpha_)
    assert np.allclose(coef, reference.coef_) and intercept == pytest.approx(reference.intercept_)


def _study(tmp_path: Path) -> str:
    """Six training datasets per tiny base model; the gain on gsm8k-tiny falls with perplexity."""
    uri = f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    (tmp_path / "runs").mkdir()
    tracker = Tracker(uri, STUDY, tmp_path / "runs" / "artifacts")
    rng = np.random.default_rng(3)
    for model in MODELS:
        for d in range(6):
            ppl = float(rng.uniform(2, 40))
            for seed in range(2):
                tags = {
                    "sftlab.trial_key": f"{model}-{d}-{seed}",
                    "sftlab.base_model": model,
                    "sftlab.dataset": f"d{d}",
                    "sftlab.method": "full",
                }
                run_id = tracker.create_run("trial", f"{model}/d{d}[seed={seed}]", tags, {"training.seed": seed})
                gain = -0.02 * ppl + float(rng.normal(0, 0.01))
                tracker.log_metrics(
                    run_id,
                    {
                        "profile/ppl": ppl,
                        f"gain/{BENCH}/score": gain,
                        f"gain/{BENCH}/score_ci_low": gain - 0.05,
                        f"gain/{BENCH}/score_ci_high": gain + 0.05,
                    },
                )
                tracker.finish(run_id)
    return uri


def _candidates(tmp_path: Path, uri: str) -> Path:
    spec = {
        "name": "candidates",
        "prompt_template": "###Question: {instruction}\n###Answer: {response}",
        "base_models": [{"name": n, "uri": u} for n, u in MODELS.items()],
        "datasets": [
            {"name": "math", "uri": str(EXAMPLES / "data" / "math.jsonl")},
            {"name": "code", "uri": str(EXAMPLES / "data" / "code.jsonl")},
            {"name": "chat", "uri": str(EXAMPLES / "data" / "chat.jsonl"), "format": "messages"},
        ],
        "benchmarks": [{"name": BENCH, "kind": "gsm8k", "uri": str(EXAMPLES / "data" / "gsm8k_tiny.jsonl")}],
        "training": {"max_length": 128},
        "profile": {"max_rows": 32, "batch_size": 16, "embedding_model": None, "bootstrap_resamples": 100},
        "tracking": {"uri": uri, "root": str(tmp_path / "runs")},
    }
    path = tmp_path / "candidates.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _ranking(stdout: str, model: str) -> list[str]:
    block = stdout.split(f"  {model}\n")[1].split("\n  tiny-")[0]
    return re.findall(r"^\s+\d+\. (\w+)\s+[+-]", block, flags=re.M)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_predict_ranks_candidate_datasets_through_the_cli(tmp_path: Path):
    uri = _study(tmp_path)
    built = run_cli(
        "report",
        "--experiment",
        STUDY,
        "--tracking-uri",
        uri,
        "-o",
        str(tmp_path / "report"),
        "--quiet",
        "--resamples",
        "200",
        cwd=tmp_path,
    )
    assert built.returncode == 0, built.stderr
    predictor = json.loads((tmp_path / "report" / "predictor.json").read_text())
    target = predictor["targets"][f"{BENCH}/score"]
    assert target["cv"]["mae"] < target["cv"]["baseline_mae"]
    assert target["coef"][target["features"].index("profile/ppl")] < 0
    assert {f for f in target["features"] if f.startswith(MODEL)} <= {MODEL + m for m in MODELS}
    study = Tracker(uri, STUDY)
    assert REPORT_TAG in study.latest("tags.`sftlab.stage` = 'report'").data.tags

    spec = _candidates(tmp_path, uri)
    out_csv = tmp_path / "ranking.csv"
    first = run_cli("predict", str(spec), "--experiment", STUDY, "-o", str(out_csv), cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    assert f"predictor from the latest report of experiment '{STUDY}'" in first.stdout
    assert re.search(rf"{BENCH}/score: predicted gain ± CV RMSE\. .*: beats the baseline", first.stdout)

    # profiles were computed for real (no training) and cached in the spec's own experiment
    candidates = Tracker(uri, "candidates")
    profiles = {
        (r.data.tags["sftlab.base_model"], r.data.tags["sftlab.dataset"]): r.data.metrics["profile/ppl"]
        for r in candidates.search("tags.`sftlab.stage` = 'profile' AND attributes.status = 'FINISHED'")
    }
    assert len(profiles) == 6
    assert not list(candidates.search("tags.`sftlab.stage` = 'trial'"))
    for model in MODELS:
        by_ppl = sorted(["math", "code", "chat"], key=lambda d: profiles[model, d])
        assert _ranking(first.stdout, model) == by_ppl  # lower perplexity, larger predicted gain
    with out_csv.open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 6 and {r["beats_baseline"] for r in rows} == {"True"}
    assert all(float(r["uncertainty_cv_rmse"]) == pytest.approx(target["cv"]["rmse"]) for r in rows)

    # a second call reuses the cached profiles; --refit learns from the trials without the report
    second = run_cli("predict", str(spec), "--experiment", STUDY, "--refit", cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert f"fitted now from the finished trials of experiment '{STUDY}'" in second.stdout
    assert len(list(candidates.search("tags.`sftlab.stage` = 'profile'"))) == 6
    for model in MODELS:
        assert _ranking(second.stdout, model) == _ranking(first.stdout, model)

    missing = run_cli("predict", str(spec), "--experiment", "nope", cwd=tmp_path)
    assert missing.returncode == 2 and "no experiment named 'nope'" in missing.stderr
