"""The report on a synthetic MLflow experiment with planted effects (sqlite store, no training).

``tests/support/synthetic_study.py`` builds gains from known parts; each test asks the report to recover
one part and to report nothing where nothing was planted.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sftlab.errors import SftlabError
from sftlab.reporting import gains, layers, methods, prediction, predictors, synergy
from sftlab.reporting.content import Options as AnalysisOptions
from sftlab.reporting.gain_model import REPORT_TAG, Predictor
from sftlab.reporting.sections import Options
from sftlab.reporting.trials import TrialRow, attach_checkpoints, finished, measures, runs_by_key, trial_row
from sftlab.spec.job import RunContext
from sftlab.stages import report
from sftlab.tracking.runs import Tracker
from tests.support import synthetic_study as study_gen
from tests.support.synthetic_study import MODELS, NOISE_PREDICTORS, Planned

EXPERIMENT = "synthetic-study"
# Failures sit in filler cells, so no planted synergy cell loses a trial.
FAIL_ONLY = {1, 35}  # llama-tiny/alpaca seed 1, qwen-tiny/lima seed 3
RETRIED = 2  # failed once, then finished: must count once, as finished
NEVER_RUN = 9
TABLES = ("gains", "predictors", "layers", "synergy", "synergy_classes", "methods", "curves", "predictor_cv")


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> tuple[Tracker, list[Planned], RunContext]:
    root = tmp_path_factory.mktemp("study")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    tracker = Tracker(uri, EXPERIMENT, root / "artifacts")
    sweep = tracker.create_run("sweep", "sweep", {"sftlab.sweep_key": "k"})
    rng = np.random.default_rng(7)
    profiles = study_gen.profiles(rng)
    planned = study_gen.plan()
    for index, trial in enumerate(planned):
        if index == NEVER_RUN:
            continue
        if index in FAIL_ONLY | {RETRIED}:
            failed = study_gen.create_trial(tracker, sweep, trial)
            tracker.finish(failed, ok=False, error="train: OutOfMemoryError: CUDA out of memory")
        if index not in FAIL_ONLY:
            run_id = study_gen.create_trial(tracker, sweep, trial)
            study_gen.log_trial(
                tracker, run_id, trial, profiles[trial.model, trial.dataset], rng, checkpoints=trial.seed in (0, 2)
            )
            tracker.finish(run_id)
    stray = Planned("not-planned", "other-sweep/trial", MODELS[0], "alpaca", 0)  # in the experiment, not in this sweep
    run_id = study_gen.create_trial(tracker, sweep, stray)
    study_gen.log_trial(tracker, run_id, stray, profiles[MODELS[0], "alpaca"], rng, checkpoints=False)
    tracker.finish(run_id)
    ctx = RunContext(tracking_uri=uri, experiment=EXPERIMENT, root=str(root), sweep_run_id=sweep)
    return tracker, planned, ctx


@pytest.fixture(scope="module")
def built(study) -> Path:
    tracker, planned, ctx = study
    return report.build_for_sweep(tracker, planned, ctx)


@pytest.fixture(scope="module")
def markdown(built) -> str:
    return built.with_name("report.md").read_text()


def table(built: Path, name: str) -> pd.DataFrame:
    return pd.read_parquet(built.parent / "tables" / f"{name}.parquet")


def test_files_and_sweep_artifacts(study, built):
    tracker, _, ctx = study
    assert built == Path(ctx.root) / "reports" / EXPERIMENT / "report.html"
    expected = {"report.html", "report.md", "trials.csv", "trials.parquet", "predictor.json", report.BUILT_FROM}
    expected |= {f"tables/{name}.{ext}" for name in TABLES for ext in ("csv", "parquet")}
    assert {p.relative_to(built.parent).as_posix() for p in built.parent.rglob("*") if p.is_file()} == expected
    listed = {f.path for f in tracker.client.list_artifacts(ctx.sweep_run_id, "report")}
    listed |= {f.path for f in tracker.client.list_artifacts(ctx.sweep_run_id, "report/tables")}
    assert {f"report/{name}" for name in expected - {report.BUILT_FROM}} <= listed
    run = tracker.client.get_run(ctx.sweep_run_id)
    assert run.data.tags[REPORT_TAG].isdigit()
    assert run.data.metrics["report/trials_finished"] == 81 and run.data.metrics["report/trials_failed"] == 2
    assert "report/predictor/boolq/score/cv_mae" in run.data.metrics


def test_a_rerun_keeps_the_report_until_a_trial_changes(tmp_path: Path) -> None:
    """A sweep re-run that ran nothing keeps its report; one more finished trial rebuilds it."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "rerun", tmp_path / "artifacts")
    sweep = tracker.create_run("sweep", "sweep", {"sftlab.sweep_key": "k"})
    rng = np.random.default_rng(3)
    profiles = study_gen.profiles(rng)
    planned = study_gen.plan()[:6]

    def finish(trial: Planned) -> None:
        run_id = study_gen.create_trial(tracker, sweep, trial)
        study_gen.log_trial(tracker, run_id, trial, profiles[trial.model, trial.dataset], rng, checkpoints=False)
        tracker.finish(run_id)

    for trial in planned[:5]:
        finish(trial)
    ctx = RunContext(tracking_uri=uri, experiment="rerun", root=str(tmp_path), sweep_run_id=sweep)
    html = report.build_for_sweep(tracker, planned, ctx)
    built_ns = html.stat().st_mtime_ns
    assert "6 trials: 5 finished, 0 failed, 1 missing." in html.with_name("report.md").read_text()
    assert report.build_for_sweep(tracker, planned, ctx) == html and html.stat().st_mtime_ns == built_ns
    finish(planned[5])
    report.build_for_sweep(tracker, planned, ctx)
    assert html.stat().st_mtime_ns != built_ns
    assert "6 trials: 6 finished, 0 failed, 0 missing." in html.with_name("report.md").read_text()
    run = tracker.client.get_run(sweep)
    assert run.data.tags[report.DIGEST_TAG] == (html.parent / report.BUILT_FROM).read_text()


def test_html_is_self_contained_with_gain_table(study, built):
    _, planned, _ = study
    page = built.read_text()
    assert page.count("src='data:image/png;base64,") >= 8
    page = re.sub(r"base64,[A-Za-z0-9+/=]+", "base64,", page)
    assert "<script" not in page and "<link" not in page and "http" not in page
    for index, trial in enumerate(planned):
        if index not in FAIL_ONLY | {NEVER_RUN}:
            assert f"<td>{trial.label}</td>" in page
    assert "other-sweep/trial" not in page
    assert "nan" not in page.lower()


def test_summary_counts_each_trial_once_and_lists_failures(study, markdown):
    _, planned, _ = study
    assert "84 trials: 81 finished, 2 failed, 1 missing." in markdown
    for index in FAIL_ONLY:
        assert re.search(rf"\| {re.escape(planned[index].label)} \| failed \| train: OutOfMemoryError", markdown)
    assert f"| {planned[NEVER_RUN].label} | missing | no finished or failed run |" in markdown
    assert planned[RETRIED].label not in markdown.split("## Best trials")[0]


def test_ci_bounds_are_the_score_ci_not_metrics(built, markdown):
    # gsm8k logs exact_match identical to score: analysed once, as the score; loglik is its own metric
    assert (
        "Benchmark metrics analysed: boolq/score, gsm8k/score, gsm8k/loglik, humaneval/score, noise-bench/score."
        in markdown
    )
    gains = table(built, "gains")
    assert not gains["measure"].str.contains("_ci_").any()
    scored = gains[gains["metric"] == "score"]
    assert np.allclose(scored["gain_ci_high"] - scored["gain_ci_low"], 0.08)
    assert gains[gains["metric"] == "loglik"]["gain_ci_low"].isna().all()
    with built.with_name("trials.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 84 and sum(r["status"] == "finished" for r in rows) == 81
    assert {"gain/gsm8k/loglik", "gain/boolq/score_ci_low", "weights/layer_2/rel_change", "training.max_rows"} <= set(
        rows[0]
    )
    assert len(pd.read_parquet(built.with_name("trials.parquet"))) == 84


def test_perplexity_predicts_gain_and_noise_measures_do_not(built, markdown):
    found = table(built, "predictors")
    pooled = found[found["scope"] == "all base models"].set_index(["predictor", "measure"])
    ppl = pooled.loc[("profile/ppl", "boolq/score")]  # planted: boolq gain = -K (ppl - centre) + ...
    assert ppl["rho"] < -0.7 and ppl["ci_high"] < 0 and ppl["significant"]
    assert pooled.loc[("profile/ppl_mean_example", "boolq/score")]["significant"]  # its near-copy
    # the pooled ranking puts the two perplexities first
    ranking = markdown.split("| rank | predictor |")[1]
    assert re.search(r"\| 1 \| perplexity", ranking) and re.search(r"\| 2 \| perplexity", ranking)
    # nothing else is significant anywhere: not the noise measures, not on the pure-noise benchmark
    significant = found[found["significant"]]
    assert set(significant["predictor"]) <= {"profile/ppl", "profile/ppl_mean_example"}
    assert not (significant["measure"] == "noise-bench/score").any()
    assert set(NOISE_PREDICTORS) <= set(found["predictor"])
    assert "profile/ppl_ci_low" not in set(found["predictor"]) and "profile/ppl_sampled_rows" not in set(
        found["predictor"]
    )
    assert {"llama-tiny", "qwen-tiny", "mistral-tiny"} <= set(found["scope"])
    assert re.search(r"boolq/score: strongest predictor perplexity .*\(significant\)", markdown)
    assert re.search(r"noise-bench/score: strongest predictor .*\(not significant\)", markdown)


def test_middle_layers_correlate_most(built, markdown):
    found = table(built, "layers")
    pooled = found[found["scope"] == "all base models"].set_index(["weights", "measure"])
    middle = "depth: middle third"
    depths = pooled.loc[
        [(w, "boolq/score") for w in pooled.index.get_level_values(0).unique() if w.startswith("depth:")]
    ]
    assert depths["rho"].abs().idxmax()[0] == middle  # planted on boolq: layers 2-3 of 6
    assert pooled.loc[(middle, "boolq/score")]["significant"] and pooled.loc[(middle, "boolq/score")]["rho"] > 0.3
    assert re.search(r"boolq/score: the middle third correlates most: .*\(significant\)", markdown)
    # LoRA trials change weights 5x less and gain more on boolq: stratified ranks keep that out
    assert not pooled.loc[("depth: early (bottom third)", "boolq/score")]["significant"]
    significant = found[found["significant"] & (found["scope"] == "all base models")]
    assert set(significant["weights"]) <= {middle, "layer 2", "layer 3", "all weights"}
    assert not (significant["measure"] == "noise-bench/score").any()


def test_synergy_classes_follow_the_stated_rule(built, markdown):
    classes = table(built, "synergy_classes").set_index(["dataset", "measure"])["class"]
    assert classes["codealpaca", "humaneval/score"] == "universal +"
    assert classes["mathinstruct", "gsm8k/score"] == "universal −"
    assert classes["codealpaca", "gsm8k/score"] == "model-specific"
    assert classes["mathinstruct", "boolq/score"] == "no effect"
    assert classes["mathinstruct", "humaneval/score"] == "no effect"
    cells = table(built, "synergy").set_index(["base_model", "dataset", "measure"])
    assert cells.loc[("llama-tiny", "codealpaca", "gsm8k/score"), "effect"] == 1
    assert cells.loc[("qwen-tiny", "codealpaca", "gsm8k/score"), "effect"] == 0
    assert "Rule: the effect of dataset d on benchmark metric b for base model m" in markdown
    assert "universal +: codealpaca → humaneval/score (3 base models)" in markdown
    assert "codealpaca → gsm8k/score (llama-tiny +, mistral-tiny 0, qwen-tiny 0)" in markdown


def test_full_vs_lora_per_task_family(built):
    methods = table(built, "methods").set_index(["level", "name"])
    assert methods.loc[("metric", "gsm8k/score"), "verdict"] == "full better"
    assert methods.loc[("metric", "boolq/score"), "verdict"] == "lora better"
    assert methods.loc[("metric", "humaneval/score"), "verdict"] == "no significant difference"
    # boolq and noise-bench share the multiple_choice family (sftlab.benchmark_kind.* tags)
    assert methods.loc[("family", "multiple_choice"), "pairs"] == 21
    assert methods.loc[("family", "gsm8k"), "verdict"] == "full better"


def test_data_size_and_epoch_curves(built, markdown):
    curves = table(built, "curves")
    size = curves[(curves["axis"] == "training.max_rows") & (curves["measure"] == "boolq/score")]
    for method in ("full", "lora"):
        mine = size[size["method"] == method].set_index("level")["mean"]
        assert mine["1000"] > mine["500"]
    epochs = curves[(curves["axis"] == "checkpoint_epoch") & (curves["measure"] == "boolq/score")]
    assert set(epochs["level"]) == {"1", "2", "3"}  # checkpoints at 1-2, the final model at 3
    mean = epochs.groupby("level")["mean"].mean()
    assert mean["1"] < mean["2"] - 0.02
    assert re.search(r"boolq/score: gain change over the last evaluated epoch .* \(converged\)", markdown)


def test_predictor_beats_the_baseline_only_where_there_is_signal(built, markdown):
    predictor = Predictor.from_json(built.with_name("predictor.json").read_text())
    assert predictor.targets["boolq/score"].cv.beats_baseline
    assert predictor.targets["boolq/score"].cv.scheme == "leave one dataset out"
    assert not predictor.targets["noise-bench/score"].cv.beats_baseline
    assert "noise-bench/score: cross-validated MAE" in markdown
    assert re.search(r"noise-bench/score: cross-validated MAE .* does NOT beat the baseline", markdown)
    target = predictor.targets["boolq/score"]
    ppl = target.features.index("profile/ppl")
    assert target.coef[ppl] < 0
    raw = json.loads(built.with_name("predictor.json").read_text())
    assert set(raw["targets"]["boolq/score"]) >= {"features", "center", "scale", "coef", "intercept", "alpha", "cv"}


def test_experiment_report_and_too_few_trials(study, tmp_path):
    _, _, ctx = study
    path = report.build_for_experiment(ctx.tracking_uri, EXPERIMENT, tmp_path / "all", Options(resamples=200))
    # every trial key with a run, the unplanned one included; a never-run trial is unknown here
    assert "84 trials: 82 finished, 2 failed, 0 missing." in path.with_name("report.md").read_text()
    small = Tracker(ctx.tracking_uri, "two-trials", Path(ctx.root) / "artifacts")
    for index in range(2):  # an older run's metrics: exact_match and loglik gains, no score, no CIs
        trial = Planned(f"k{index}", f"m/d[seed={index}]", "m", "d", index)
        run_id = study_gen.create_trial(small, None, trial)
        small.log_metrics(
            run_id, {"profile/ppl": 2.0 + index, "gain/gsm8k/exact_match": 0.1 * index, "gain/gsm8k/loglik": 0.2}
        )
        small.finish(run_id)
    path = report.build_for_experiment(ctx.tracking_uri, "two-trials", tmp_path / "two")
    text = path.with_name("report.md").read_text()
    assert "Benchmark metrics analysed: gsm8k/exact_match, gsm8k/loglik." in text
    assert "n/a (too few trials)" in text
    assert "nan" not in text.lower()
    assert not (tmp_path / "two" / "predictor.json").exists()
    # without a sweep run, the report gets a run of its own, which `sftlab predict` finds
    own = small.latest("tags.`sftlab.stage` = 'report'")
    assert own is not None and REPORT_TAG in own.data.tags
    with pytest.raises(SftlabError, match="no experiment named 'absent'"):
        report.build_for_experiment(ctx.tracking_uri, "absent", tmp_path / "absent")


@pytest.fixture(scope="module")
def done(study) -> list[TrialRow]:
    """The sweep's finished trials, read back as the report reads them."""
    tracker, planned, _ = study
    finished_runs, failed = runs_by_key(tracker)
    rows = [trial_row(t.key, t.label, finished_runs, failed) for t in planned]
    attach_checkpoints(tracker, rows)
    return finished(rows)


OPTIONS = AnalysisOptions(resamples=200)


def test_analyses_recover_the_planted_numbers(done, built):
    """Each section's numbers straight from its analyse step, and they are what the report's tables hold."""
    found = measures(done)
    names = [m.name for m in found]
    frames = {
        "gains": gains.analyse(done, found, OPTIONS).frame,
        "synergy": synergy.analyse(done, found, OPTIONS).frame,
        "methods": methods.analyse(done, found, OPTIONS).frame,
        "curves": methods.analyse_curves(done, found, OPTIONS).frame,
        "predictor_cv": prediction.cv_frame(prediction.analyse(done, found, OPTIONS)),
    }
    for name, frame in frames.items():  # the bootstrap-free tables match the rendered report exactly
        written = table(built, name)
        keep = [c for c in written.columns if c != "run_id"]
        pd.testing.assert_frame_equal(frame[keep].reset_index(drop=True), written[keep], check_dtype=False)

    assert len(frames["gains"]) == 81 * len(names)
    ppl = predictors.analyse(done, found, OPTIONS)
    assert ppl.result is not None and len(ppl.units) == 21
    corr = ppl.result.corrs[predictors.POOLED]["profile/ppl", "boolq/score"]
    assert corr is not None and corr.rho < -0.7 and corr.high < 0 and corr.significant
    assert ppl.result.ranked(predictors.POOLED, found)[0][0].startswith("profile/ppl")

    depth = layers.analyse(done, found, OPTIONS)
    pooled = depth.results[layers.POOLED]
    by_depth = {d: pooled[f"depth: {layers.DEPTH_TITLES[d]}", "boolq/score"] for d in layers.DEPTHS}
    assert max(by_depth, key=lambda d: abs(by_depth[d].rho)) == "middle"  # type: ignore[union-attr]
    assert depth.counts == dict.fromkeys(MODELS, 6)

    cells = synergy.analyse(done, found, OPTIONS)
    assert cells.verdicts["codealpaca", "humaneval/score"][0] == synergy.UNIVERSAL_UP
    assert cells.verdicts["mathinstruct", "gsm8k/score"][0] == synergy.UNIVERSAL_DOWN
    assert cells.cells["llama-tiny", "codealpaca", "gsm8k/score"].sign == 1

    compared = methods.analyse(done, found, OPTIONS).frame.set_index(["level", "name"])
    assert compared.loc[("metric", "gsm8k/score"), "diff_ci_low"] > 0  # full better
    assert compared.loc[("metric", "boolq/score"), "diff_ci_high"] < 0  # lora better
    curves = methods.analyse_curves(done, found, OPTIONS)
    assert [c.axis for c in curves.swept] == ["training.max_rows"]
    assert curves.epochs is not None and curves.epochs.levels == ["1", "2", "3"]
    converged = curves.convergence["boolq/score"]
    assert converged is not None and converged.sign == 0
    factors = methods.analyse_factors(done, found, OPTIONS)
    assert sum(f.trials for f in factors.levels if f.factor == "method") == 81

    fitted = prediction.analyse(done, found, OPTIONS)
    assert fitted.targets["boolq/score"].cv.beats_baseline
    assert not fitted.targets["noise-bench/score"].cv.beats_baseline


def test_one_confidence_level_reaches_every_analysis(done):
    """A lower level narrows every CI and loosens every test: the spec's evaluation.confidence is the one knob."""
    found = measures(done)
    wide, narrow = OPTIONS, AnalysisOptions(resamples=200, confidence=0.8)

    def width(frame: pd.DataFrame) -> float:
        return float((frame["ci_high"] - frame["ci_low"]).median())

    assert width(layers.analyse(done, found, narrow).frame) < width(layers.analyse(done, found, wide).frame)
    assert width(predictors.analyse(done, found, narrow).frame) < width(predictors.analyse(done, found, wide).frame)
    assert width(methods.analyse_curves(done, found, narrow).frame) < width(
        methods.analyse_curves(done, found, wide).frame
    )
    at_80 = synergy.analyse(done, found, narrow)
    assert all(c.confidence == 0.8 for c in at_80.cells.values())
    assert "q < 0.2." in synergy.render(at_80).text[0] and "unadjusted 80% CI" in synergy.render(at_80).text[0]


def test_analyse_needs_no_matplotlib(study):
    """The analyse steps are numbers only: a process that runs them all never imports matplotlib."""
    import subprocess
    import sys

    from tests.support.helpers import REPO

    _, planned, ctx = study
    keys = {t.key: t.label for t in planned}
    script = f"""
import sys
from sftlab.reporting.sections import ANALYSES
from sftlab.reporting.content import Options
from sftlab.reporting.trials import finished, measures, runs_by_key, trial_row
from sftlab.tracking.runs import Tracker
tracker = Tracker({ctx.tracking_uri!r}, {EXPERIMENT!r})
finished_runs, failed = runs_by_key(tracker)
done = finished([trial_row(k, label, finished_runs, failed) for k, label in {keys!r}.items()])
for analyse, _ in ANALYSES.values():
    analyse(done, measures(done), Options(resamples=50))
print("matplotlib" in sys.modules)
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "False"


def _row(
    metrics: dict[str, float], tags: dict[str, str] | None = None, params: dict[str, str] | None = None, key: str = "k"
) -> TrialRow:
    from types import SimpleNamespace

    run = SimpleNamespace(
        data=SimpleNamespace(metrics=metrics, params=params or {}, tags=tags or {}), info=SimpleNamespace(run_id=key)
    )
    return TrialRow(key, key, "finished", run)  # type: ignore[arg-type]


def test_measures_skip_ci_bounds_and_keep_old_metric_names():
    rows = [
        _row(
            {
                "gain/b/score": 0.1,
                "gain/b/score_ci_low": 0.0,
                "gain/b/score_ci_high": 0.2,
                "gain/b/pass_at_1": 0.3,
                "gain/old/exact_match": 0.1,
                "gain/old/loglik": 0.2,
                "gain/mc/score": 0.1,
                "gain/mc/acc": 0.1,
            }
        )
    ]
    assert [m.name for m in measures(rows)] == ["b/score", "b/pass_at_1", "mc/score", "old/exact_match", "old/loglik"]
    assert measures(rows)[0].ci(rows[0]) == (0.0, 0.2)


@pytest.mark.parametrize("shape", ["quickstart", "no-weights", "one-trial-per-cell", "single-method"])
def test_small_and_partial_sweeps_render_without_nan(shape, tmp_path):
    """What a real quickstart logs (1-2 base models, 2 datasets, full + LoRA, few layers), and partial variants."""
    from sftlab.reporting.render import write_report

    rng = np.random.default_rng(1)
    rows = []
    models = ("tiny-llama-chat",) if shape == "quickstart" else ("a", "b")
    for i, (model, dataset, method) in enumerate(
        (m, d, me) for m in models for d in ("math", "code") for me in ("full", "lora")
    ):
        if shape == "single-method" and method == "lora":
            continue
        metrics = {
            "profile/ppl": float(rng.uniform(5, 50)),
            "profile/tokens_mean": 40.0,
            "train/final_loss": 1.0,
            "time/train_s": 3.0,
        }
        for bench in ("gsm8k-tiny",):
            gain = float(rng.normal(0, 0.05))
            metrics.update(
                {
                    f"gain/{bench}/score": gain,
                    f"eval/{bench}/score": 0.1 + gain,
                    f"base/{bench}/score": 0.1,
                    f"gain/{bench}/loglik": float(rng.normal(0, 0.1)),
                }
            )
            if shape != "one-trial-per-cell":
                metrics.update({f"gain/{bench}/score_ci_low": gain - 0.1, f"gain/{bench}/score_ci_high": gain + 0.1})
        if shape != "no-weights":
            metrics.update({f"weights/layer_{j}/rel_change": float(rng.uniform(0, 0.1)) for j in range(4)})
        tags = {"sftlab.base_model": model, "sftlab.dataset": dataset, "sftlab.method": method}
        row = _row(metrics, tags, {"training.epochs": "4", "training.method": method}, key=f"t{i}")
        row.epochs = {1: {"gain/gsm8k-tiny/score": 0.0}} if i % 2 else {}
        rows.append(row)
    path = write_report(rows, tmp_path, "small", Options(resamples=100))
    page = re.sub(r"base64,[A-Za-z0-9+/=]+", "base64,", path.read_text())
    assert not re.search(r"\b(nan|inf)\b", page.lower())
    assert "nan" not in path.with_name("report.md").read_text().lower()


CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]


def test_html_renders_in_headless_chromium(built, tmp_path):
    """Debian's chromium opens the page: no console or page errors, every plot decoded, a non-trivial screenshot."""
    sync_api = pytest.importorskip("playwright.sync_api")
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    from PIL import Image

    problems: list[str] = []
    with sync_api.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on(
                "console",
                lambda msg: (
                    problems.append(f"console {msg.type}: {msg.text}") if msg.type in ("error", "warning") else None
                ),
            )
            page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
            page.on("requestfailed", lambda req: problems.append(f"request failed: {req.url[:80]}"))
            page.goto(built.as_uri(), wait_until="load")
            images = page.evaluate(
                "Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight])"
            )
            headings = page.evaluate("Array.from(document.querySelectorAll('h2')).map(h => h.textContent)")
            page.click("nav a[href='#gains-per-trial']")  # the contents link jumps to its section
            anchor = page.evaluate("location.hash")
            shot = tmp_path / "report.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert problems == []
    assert anchor == "#gains-per-trial"
    assert len(images) >= 8 and all(done and width > 100 and height > 100 for done, width, height in images)
    assert {"Predictors of gain (data profile)", "Layer change vs gain", "Task synergy: dataset × benchmark"} <= set(
        headings
    )
    assert shot.stat().st_size > 50_000
    with Image.open(shot) as picture:
        assert picture.width == 1400 and picture.height > 3000  # the whole page, not one screen
        pixels = np.asarray(picture.convert("L").resize((200, 600)))
    assert pixels.std() > 10 and len(np.unique(pixels)) > 50  # text and plots, not a blank page
