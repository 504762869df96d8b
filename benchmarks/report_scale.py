"""Report stage at study scale: 1,000 trial runs with full metrics, against the raw fetch of those runs.

    python benchmarks/report_scale.py                        # 1,000 trials, 10% with 3 checkpoint runs
    python benchmarks/report_scale.py --trials 2000 --keep /tmp/scale   # reuse the store on the next call

It writes a synthetic experiment into a local MLflow store (sqlite): base models × datasets ×
{full, LoRA} × seeds, each trial run with the metric contract's full set (~45 profile measures plus
6 similarity measures per benchmark, eval/base/gain with score CIs on 10 benchmarks, 32 layers of
weight change, modules, depths, timings; ~270 metrics, 6 params, 7 tags), one ``log_batch`` per
run. Then it measures, in the same process:

* raw fetch: one paged ``Tracker.search`` of all trial runs (what any report must at least read;
  the best of two);
* report: ``build_for_experiment`` end to end (fetch trials and checkpoints, every analysis with
  1,000 bootstrap resamples, HTML/Markdown/CSV/Parquet, artifacts logged to the sweep run).

Prints the section timings, then the headline line (target: report under 60 s).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BENCHMARKS = ("gsm8k", "math", "humaneval", "mbpp", "boolq", "nq", "truthfulqa", "mmlu", "mtbench", "alpacaeval")
EXTRA = {
    "gsm8k": ("exact_match", "loglik"),
    "humaneval": ("pass_at_1",),
    "mbpp": ("pass_at_1",),
    "mmlu": ("acc", "acc_norm"),
}  # MLflow rejects "@" in names
MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LAYERS = 32
EXPERIMENT = "report-scale"


def profile(rng: np.random.Generator, ppl: float) -> dict[str, float]:
    names = [
        "rows",
        "skipped_rows",
        "malformed_share",
        "empty_response_share",
        "overlong_response_share",
        "turns_mean",
        "tokens_total",
        "tokens_mean",
        "prompt_tokens_mean",
        "prompt_tokens_p50",
        "prompt_tokens_p90",
        "prompt_tokens_p99",
        "response_tokens_mean",
        "response_tokens_p50",
        "response_tokens_p90",
        "response_tokens_p99",
        "truncated_share",
        "chars_per_token",
        "unk_rate",
        "byte_fallback_rate",
        "ppl_p50",
        "ppl_p90",
        "distinct_1",
        "distinct_2",
        "distinct_3",
        "distinct_4",
        "exact_dup_rate",
        "near_dup_rate",
        "embed_pairwise_distance",
    ]
    out = {f"profile/{n}": float(rng.uniform(0, 1)) for n in names}
    out.update(
        {
            "profile/ppl": ppl,
            "profile/ppl_ci_low": ppl * 0.97,
            "profile/ppl_ci_high": ppl * 1.03,
            "profile/ppl_mean_example": ppl * 1.1,
            "profile/ppl_mean_example_ci_low": ppl,
            "profile/ppl_mean_example_ci_high": ppl * 1.2,
            "profile/ppl_sampled_rows": 2000.0,
            "profile/embed_sampled_rows": 256.0,
        }
    )
    for bench in BENCHMARKS:
        out.update({f"profile/sim/{bench}/ngram_overlap_{n}": float(rng.uniform(0, 0.3)) for n in (1, 2, 3)})
        out.update(
            {
                f"profile/sim/{bench}/embed_centroid_cos": float(rng.uniform(0, 1)),
                f"profile/sim/{bench}/embed_max_sim": float(rng.uniform(0, 1)),
                f"profile/contaminated/{bench}": 0.0,
            }
        )
    return out


def trial_metrics(rng: np.random.Generator, prof: dict[str, float], full: bool) -> dict[str, float]:
    z = rng.normal(0, 1, LAYERS)
    drive = -0.3 * np.log(prof["profile/ppl"]) + 0.3 * z[10:22].mean() + rng.normal(0, 0.2)
    out = dict(prof)
    for bench in BENCHMARKS:
        gain = 0.02 * (drive + rng.normal(0, 0.5))
        for metric in ("score", *EXTRA.get(bench, ())):
            g = gain if metric in ("score", "exact_match") else gain * float(rng.uniform(0.5, 2))
            out.update({f"base/{bench}/{metric}": 0.3, f"eval/{bench}/{metric}": 0.3 + g, f"gain/{bench}/{metric}": g})
        out.update(
            {
                f"eval/{bench}/items": 500.0,
                f"eval/{bench}/score_ci_low": 0.28 + gain,
                f"eval/{bench}/score_ci_high": 0.32 + gain,
                f"gain/{bench}/score_ci_low": gain - 0.02,
                f"gain/{bench}/score_ci_high": gain + 0.02,
            }
        )
    scale = 1.0 if full else 0.1
    layer = scale * (0.02 + 0.003 * z)
    out.update({f"weights/layer_{i}/rel_change": float(v) for i, v in enumerate(layer)})
    for d, part in (("bottom", layer[:11]), ("middle", layer[11:22]), ("top", layer[22:])):
        out[f"weights/depth_{d}/rel_change"] = float(part.mean())
        out[f"weights/depth_{d}/abs_change"] = float(part.mean() * 40)
    for group in (*(f"module_{m}" for m in MODULES), "total"):
        out.update(
            {
                f"weights/{group}/{k}": float(rng.uniform(0, 1))
                for k in ("rel_change", "abs_change", "cosine", "max_abs_change")
            }
        )
    out.update(
        {
            "train/final_loss": 1.0,
            "train/tokens_per_s": 5000.0,
            "time/profile_s": 60.0,
            "time/baseline_s": 0.0,
            "time/train_s": 600.0,
            "time/evaluate_s": 18000.0,
            "time/weights_s": 90.0,
        }
    )
    return out


def create(uri: str, root: Path, trials: int, checkpoint_share: float) -> None:
    """The experiment, one create_run + log_batch + set_terminated per run."""
    from mlflow.entities import Metric, Param, RunTag

    from sftlab.tracking.runs import Tracker

    tracker = Tracker(uri, EXPERIMENT, root / "artifacts")
    client = tracker.client
    sweep = tracker.create_run("sweep", "sweep", {"sftlab.sweep_key": "scale"})
    rng = np.random.default_rng(0)
    models, datasets = 10, 10
    per_pair = max(1, trials // (models * datasets))
    profiles = {(m, d): profile(rng, float(rng.uniform(2, 30))) for m in range(models) for d in range(datasets)}
    now = int(time.time() * 1000)
    made = 0
    for index in range(trials):
        m, d, k = index % models, (index // models) % datasets, index // (models * datasets)
        full = k % 2 == 0
        tags = {
            "sftlab.stage": "trial",
            "sftlab.trial_key": f"t{index:05d}",
            "sftlab.base_model": f"model-{m}",
            "sftlab.dataset": f"data-{d}",
            "sftlab.method": "full" if full else "lora",
            "sftlab.label": f"model-{m}/data-{d}[k={k}]",
            "mlflow.parentRunId": sweep,
        }
        params = {
            "training.method": "full" if full else "lora",
            "training.learning_rate": "1e-05" if full else "2e-06",
            "training.epochs": "3",
            "training.seed": str(k // 2),
            "training.max_rows": str(1000 * (1 + k % max(1, per_pair // 2))),
            "training.global_batch_size": "32" if full else "128",
        }
        run = client.create_run(tracker.experiment_id, run_name=tags["sftlab.label"])
        metrics = trial_metrics(rng, profiles[m, d], full)
        client.log_batch(
            run.info.run_id,
            metrics=[Metric(k_, v, now, 0) for k_, v in metrics.items()],
            params=[Param(k_, v) for k_, v in params.items()],
            tags=[RunTag(k_, v) for k_, v in tags.items()],
            synchronous=True,
        )
        client.set_terminated(run.info.run_id)
        made += 1
        if rng.uniform() < checkpoint_share:
            for epoch in (1, 2, 3):
                child = client.create_run(tracker.experiment_id, run_name=f"{tags['sftlab.label']} epoch {epoch}")
                ctags = {
                    **tags,
                    "sftlab.stage": "checkpoint",
                    "sftlab.epoch": str(epoch),
                    "mlflow.parentRunId": run.info.run_id,
                }
                cmetrics = {
                    k_: v * epoch / 3 for k_, v in metrics.items() if k_.startswith(("eval/", "gain/", "base/"))
                }
                client.log_batch(
                    child.info.run_id,
                    metrics=[Metric(k_, v, now, 0) for k_, v in cmetrics.items()],
                    tags=[RunTag(k_, v) for k_, v in ctags.items()],
                    synchronous=True,
                )
                client.set_terminated(child.info.run_id)
                made += 1
        if (index + 1) % 200 == 0:
            print(f"  created {index + 1}/{trials} trials ({made} runs)", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--checkpoints", type=float, default=0.1, help="share of trials with 3 checkpoint runs")
    parser.add_argument("--keep", type=Path, default=None, help="keep the store here (reused when it exists)")
    args = parser.parse_args(argv)

    import logging

    logging.basicConfig(level=logging.WARNING)
    from sftlab.reporting.render import log as render_log
    from sftlab.reporting.trials import TRIAL_QUERY
    from sftlab.stages.report import build_for_experiment
    from sftlab.tracking.runs import Tracker

    render_log.setLevel(logging.INFO)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        uri = f"sqlite:///{root / 'mlflow.db'}"
        if not (root / "mlflow.db").exists():
            started = time.perf_counter()
            create(uri, root, args.trials, args.checkpoints)
            print(f"created the experiment in {time.perf_counter() - started:.1f} s")
        tracker = Tracker(uri, EXPERIMENT)
        fetch_s = []
        for _ in range(2):
            started = time.perf_counter()
            runs = list(tracker.search(TRIAL_QUERY))
            fetch_s.append(time.perf_counter() - started)
        metrics = sum(len(r.data.metrics) for r in runs) / max(1, len(runs))
        print(f"raw fetch: {len(runs)} trial runs, {metrics:.0f} metrics each: {min(fetch_s):.2f} s (best of 2)")
        started = time.perf_counter()
        path = build_for_experiment(uri, EXPERIMENT, root / "report")
        report_s = time.perf_counter() - started
        size = sum(p.stat().st_size for p in path.parent.rglob("*") if p.is_file())
        print(f"report: {path} ({size / 1e6:.1f} MB in all)")
    print(f"report_scale: {len(runs)} trials, report {report_s:.1f} s, {report_s / min(fetch_s):.1f}x the raw fetch")
    return 0


if __name__ == "__main__":
    sys.exit(main())
