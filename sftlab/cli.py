"""The ``sftlab`` command line: plan, run, compile, submit, report, predict.

Commands that need Kubeflow Pipelines import the KFP layer (``sftlab.kfp.pipelines``) lazily, so the
core package never imports kfp. User errors print one clear line (or one per spec problem) and
exit 2; a sweep with failed trials exits 1 after finishing everything else.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any

import click

from sftlab import __version__
from sftlab.errors import SftlabError

CONFIRM_ABOVE = 200  # trials; bigger local sweeps ask first (a typo in a grid multiplies fast)


def friendly(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn SftlabError into ``error: ...`` on stderr and exit code 2, without a traceback."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SftlabError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)

    return wrapper


@click.group()
@click.version_option(__version__, prog_name="sftlab")
def main() -> None:
    """sftlab: supervised fine-tuning experiments at scale, on a laptop or a Kubeflow cluster."""


def _axis_value(value: Any) -> str:
    """A recipe (mapping of settings) as ``k=v,…``; anything else as itself."""
    return ",".join(f"{k}={v}" for k, v in value.items()) if isinstance(value, dict) else str(value)


def _trial_table(trials: list[Any]) -> str:
    axes = sorted({k for t in trials for k in t.axes} - {"base_model", "dataset"})
    header = ["#", "key", "base_model", "dataset", *axes]
    rows = [
        [str(t.index + 1), t.key, t.base_model.name, t.dataset.name, *(_axis_value(t.axes.get(a, "")) for a in axes)]
        for t in trials
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join(fmt.format(*r).rstrip() for r in [header, *rows])


@main.command()
@click.argument("spec_path", type=click.Path(dir_okay=False))
@click.option(
    "--gpu", default="H100", show_default=True, help="GPU type for the GPU-hour estimate (sftlab.cost.GPU_PEAK_FLOPS)."
)
@click.option("--gpu-flops", type=float, default=None, help="Peak FLOP/s of the GPU, overriding the table.")
@click.option("--mfu", type=float, default=0.4, show_default=True, help="Assumed model FLOPs utilisation in training.")
@click.option("--eval-mfu", type=float, default=None, help="Assumed MFU in evaluation (default: as --mfu).")
@click.option(
    "--tokens-per-row", type=float, default=400.0, show_default=True, help="Assumed for data that cannot be read here."
)
@click.option(
    "--prompt-tokens",
    type=float,
    default=200.0,
    show_default=True,
    help="Assumed per benchmark item that cannot be read here.",
)
@click.option("--no-cost", is_flag=True, help="Only validate and list the trials.")
@friendly
def plan(
    spec_path: str,
    gpu: str,
    gpu_flops: float | None,
    mfu: float,
    eval_mfu: float | None,
    tokens_per_row: float,
    prompt_tokens: float,
    no_cost: bool,
) -> None:
    """Validate SPEC, print its trial table and what it will cost, without running anything."""
    from sftlab.cost import Assumptions, estimate, format_cost
    from sftlab.spec.grid import expand
    from sftlab.spec.job import context_for
    from sftlab.spec.loading import load_spec

    spec = load_spec(spec_path)
    trials = expand(spec)
    click.echo(_trial_table(trials))
    click.echo(f"\n{len(trials)} trials; benchmarks: {', '.join(b.name for b in spec.benchmarks) or 'none'}")
    if len(trials) > CONFIRM_ABOVE:
        click.echo(
            f"warning: {len(trials)} trials, more than {CONFIRM_ABOVE}: a local `sftlab run` asks before starting them "
            "(--yes skips the question)",
            err=True,
        )
    if not no_cost:
        assumptions = Assumptions(
            gpu=gpu,
            gpu_flops=gpu_flops,
            mfu=mfu,
            eval_mfu=eval_mfu,
            tokens_per_row=tokens_per_row,
            prompt_tokens=prompt_tokens,
        )
        click.echo(
            "\ncost estimate (see sftlab/cost.py for the formulas):\n"
            + format_cost(estimate(trials, context_for(spec), assumptions))
        )


def confirm_size(n_trials: int, yes: bool) -> None:
    """Ask before more than CONFIRM_ABOVE trials run here; a no, or no one to answer (stdin closed),
    stops the run before anything is tracked."""
    if n_trials <= CONFIRM_ABOVE or yes:
        return
    try:
        if click.confirm(f"{n_trials} trials will run on this machine (more than {CONFIRM_ABOVE}). Continue?"):
            return
    except click.Abort:  # end of input or Ctrl-C at the question
        click.echo("")  # ends the question's line
    raise SftlabError(f"{n_trials} trials not started: more than {CONFIRM_ABOVE} need a yes (answer y, or pass --yes)")


def check_runs_here(spec_path: str, trials: list[Any]) -> None:
    """Settings this machine cannot run (QLoRA without CUDA) fail before any trial starts."""
    from sftlab.errors import SpecError
    from sftlab.stages.train import check_method

    problems = set()
    for trial in trials:
        try:
            check_method(trial.training)
            if trial.training.distributed.nodes > 1:
                raise SftlabError(
                    f"training.distributed.nodes: {trial.training.distributed.nodes} nodes need a cluster "
                    "(sftlab submit); a local run trains on this machine"
                )
        except SftlabError as exc:
            problems.add(f"{exc} (trial {trial.label})" if len(trials) > 1 else str(exc))
    if problems:
        raise SpecError(spec_path, sorted(problems))


@main.command()
@click.argument("spec_path", type=click.Path(dir_okay=False))
@click.option(
    "--max-parallel",
    type=int,
    default=None,
    help="Trials at once (default: spec.pipeline.max_parallel_trials, capped at 2 locally).",
)
@click.option("--yes", is_flag=True, help=f"Do not ask before running more than {CONFIRM_ABOVE} trials.")
@click.option(
    "--warm-start/--no-warm-start",
    default=True,
    help="Fork each stage from a server that has torch, TRL and MLflow imported (default), or start "
    "every stage as a fresh process, as on a cluster (for debuggers, profilers, per-trial cgroups).",
)
@friendly
def run(spec_path: str, max_parallel: int | None, yes: bool, warm_start: bool) -> None:
    """Run the whole sweep of SPEC locally: each trial's pipeline through kfp.local, tracked in MLflow."""
    from sftlab.kfp.pipelines.launchers import LocalTrialLauncher
    from sftlab.signals import sigterm_interrupts
    from sftlab.spec.grid import expand
    from sftlab.spec.job import tracking_uri_for
    from sftlab.spec.loading import load_spec
    from sftlab.sweep.runner import run_sweep

    spec = load_spec(spec_path)
    trials = expand(spec)
    check_runs_here(spec_path, trials)
    confirm_size(len(trials), yes)
    parallel = max_parallel or min(spec.pipeline.max_parallel_trials, 2)
    root = Path(spec.tracking.root).resolve()
    try:
        with sigterm_interrupts():  # `kill` or a stopped container: the same clean stop as Ctrl-C
            launcher = LocalTrialLauncher(root, max_parallel=parallel, warm_start=warm_start)
            result = run_sweep(spec, launcher, echo=click.echo)
    except KeyboardInterrupt as exc:
        click.echo(
            f"\ninterrupted ({exc or 'Ctrl-C'}): the trials in flight were stopped and recorded as interrupted; "
            "run the same command again to finish the sweep (finished trials are kept)",
            err=True,
        )
        sys.exit(130)
    uri = tracking_uri_for(spec)
    click.echo("")
    click.echo(
        f"trials: {result.total} total, {result.skipped} skipped (already finished), "
        f"{result.succeeded} finished now, {len(result.failed)} failed"
    )
    for label, error in result.failed:
        click.echo(f"  FAILED {label}: {error.splitlines()[0][:300] if error else ''}")
    for line in result.headline:
        click.echo(line)
    click.echo(f"report:    {result.report_path}")
    click.echo(
        f"MLflow UI: mlflow ui --backend-store-uri {uri} --port 5000   (then open http://127.0.0.1:5000)"
        if uri.startswith("sqlite:")
        else f"MLflow:    {uri}"
    )
    click.echo(f"trial logs: {root / 'logs'}")
    if result.failed:
        sys.exit(1)


@main.command(name="compile")
@click.argument("spec_path", type=click.Path(dir_okay=False), required=False)
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False), required=True, help="Where to write the pipeline IR YAML."
)
@click.option("--pipeline", "kind", type=click.Choice(["sweep", "trial"]), default="sweep", show_default=True)
@friendly
def compile_cmd(spec_path: str | None, output: str, kind: str) -> None:
    """Compile the sweep (or trial) pipeline to IR YAML for the KFP UI, with SPEC's image and resources."""
    from sftlab.kfp.pipelines.compile import compile_pipeline
    from sftlab.spec.loading import load_spec

    spec = load_spec(spec_path) if spec_path else None
    compile_pipeline("sweep" if kind == "sweep" else "trial", spec, Path(output))
    click.echo(f"wrote {output}")


@main.command()
@click.argument("spec_path", type=click.Path(dir_okay=False))
@click.option(
    "--host",
    default=lambda: os.environ.get("KFP_HOST"),
    help="KFP API URL (default: $KFP_HOST or spec.pipeline.kfp_host).",
)
@click.option("--experiment", default=None, help="KFP experiment name (default: the spec's experiment).")
@click.option(
    "--namespace",
    default=None,
    help="Multi-user KFP: your profile namespace (default: spec.pipeline.kfp_namespace; none for single-user KFP).",
)
@click.option(
    "--token-file",
    type=click.Path(dir_okay=False, exists=True),
    default=lambda: os.environ.get("KFP_TOKEN_FILE"),
    help="Multi-user KFP: a file holding a bearer token for the pipelines.kubeflow.org audience, e.g. from "
    "`kubectl create token default-editor -n NS --audience pipelines.kubeflow.org` (default: $KFP_TOKEN_FILE).",
)
@friendly
def submit(
    spec_path: str, host: str | None, experiment: str | None, namespace: str | None, token_file: str | None
) -> None:
    """Submit the sweep pipeline for SPEC to a Kubeflow Pipelines API."""
    from sftlab.kfp.pipelines.compile import submit as submit_sweep
    from sftlab.spec.loading import load_spec

    spec = load_spec(spec_path)
    host = host or spec.pipeline.kfp_host
    if not host:
        raise SftlabError("--host: expected the KFP API URL (or set KFP_HOST / pipeline.kfp_host)")
    token = Path(token_file).read_text(encoding="utf-8").strip() if token_file else None
    if token_file and not token:
        raise SftlabError(f"--token-file {token_file}: the file is empty; expected a bearer token")
    run_id = submit_sweep(
        Path(spec_path).read_text(encoding="utf-8"),
        host,
        experiment or spec.experiment,
        spec,
        namespace=namespace or spec.pipeline.kfp_namespace,
        token=token,
    )
    click.echo(f"submitted sweep run {run_id} to {host}")


@main.command()
@click.option("--experiment", required=True, help="MLflow experiment (one per spec; default name = spec name).")
@click.option("--tracking-uri", default=None, help="Default: $MLFLOW_TRACKING_URI, else ./sftlab-runs/mlflow.db.")
@click.option(
    "-o",
    "--output-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Default: ./sftlab-runs/reports/EXPERIMENT",
)
@click.option(
    "--resamples",
    type=click.IntRange(100, 100_000),
    default=1000,
    show_default=True,
    help="Bootstrap resamples per correlation CI.",
)
@click.option(
    "--confidence",
    type=click.FloatRange(0.5, 1.0, min_open=True, max_open=True),
    default=None,
    help="Coverage of every CI (1 - it: every test's level); use the spec's evaluation.confidence. Default: 0.95.",
)
@click.option("--quiet", is_flag=True, help="Print only the report's path, not its Markdown summary.")
@friendly
def report(
    experiment: str,
    tracking_uri: str | None,
    output_dir: str | None,
    resamples: int,
    confidence: float | None,
    quiet: bool,
) -> None:
    """Build the report of an experiment from MLflow (also for sweeps run earlier or elsewhere).

    Writes report.html (self-contained), report.md, trials.csv/.parquet, tables/*.csv/.parquet and
    predictor.json, and logs them under report/ on the experiment's newest sweep run.
    """
    from sftlab.reporting.sections import Options
    from sftlab.stages.report import build_for_experiment
    from sftlab.stats import DEFAULT_CONFIDENCE

    root = Path("sftlab-runs").resolve()
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{root / 'mlflow.db'}"
    out = Path(output_dir) if output_dir else root / "reports" / experiment
    options = Options(resamples, experiment=experiment, confidence=confidence or DEFAULT_CONFIDENCE)
    path = build_for_experiment(uri, experiment, out, options)
    if not quiet:
        click.echo(path.with_name("report.md").read_text(encoding="utf-8"))
    click.echo(f"report: {path}")


@main.command()
@click.argument("spec_path", type=click.Path(dir_okay=False))
@click.option(
    "--experiment",
    default=None,
    help="The study whose trials the predictor learned from (default: the spec's experiment).",
)
@click.option(
    "--tracking-uri",
    default=None,
    help="Default: the spec's (tracking.uri, else $MLFLOW_TRACKING_URI, else its sqlite store).",
)
@click.option(
    "--refit", is_flag=True, help="Fit from the study's trials even when its latest report holds a predictor."
)
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None, help="Also write the ranking as CSV.")
@friendly
def predict(spec_path: str, experiment: str | None, tracking_uri: str | None, refit: bool, output: str | None) -> None:
    """Rank SPEC's candidate datasets per base model and benchmark by predicted gain, before any training.

    Profiles each (base model, dataset) of SPEC (cached profile runs are reused) and applies the
    gain predictor of a study: its latest report's predictor.json, else one fitted from its trials.
    """
    from mlflow import MlflowClient
    from sftlab.reporting.gain_model import format_ranking, predictor_for, rank, write_ranking_csv
    from sftlab.spec.job import tracking_uri_for
    from sftlab.spec.loading import load_spec
    from sftlab.stages.profile import profile_candidates
    from sftlab.tracking.runs import Tracker

    spec = load_spec(spec_path)
    uri = tracking_uri or tracking_uri_for(spec)
    study = experiment or spec.experiment
    if MlflowClient(uri).get_experiment_by_name(study) is None:
        raise SftlabError(f"MLflow at {uri}: no experiment named {study!r} to learn from (--experiment)")
    predictor, source = predictor_for(Tracker(uri, study), study, refit)
    if not predictor.targets:
        reasons = (
            "; ".join(f"{k}: {v}" for k, v in predictor.skipped.items())
            or "no finished trial logged gains and profiles"
        )
        raise SftlabError(f"experiment {study!r} has too little to learn from ({reasons})")
    wanted = {b.name for b in spec.benchmarks}
    measures = [name for name, t in predictor.targets.items() if t.benchmark in wanted] or list(predictor.targets)
    profiles = profile_candidates(spec, uri, echo=lambda line: click.echo(line, err=True))
    ranked = rank(predictor, profiles, measures)
    click.echo(format_ranking(predictor, ranked, source))
    if output:
        write_ranking_csv(ranked, Path(output), predictor)
        click.echo(f"\nranking: {output}")


if __name__ == "__main__":
    main()
