"""Run a sweep plan's pending trials as KFP runs: the sweep pipeline's ``launch`` step.

``python -m sftlab.kfp.pipelines.kfp_launch --spec-file SPEC --plan PLAN.json --counts OUT.json``.
The launch component starts this in a child interpreter because, inside a KFP task, only the
runtime half of the SDK is loaded and ``kfp.Client`` and the compiler cannot be imported.
"""

import argparse
import json
from pathlib import Path

from sftlab.kfp.auth import kfp_client, user_namespace
from sftlab.kfp.components.sweep import read_plan
from sftlab.kfp.pipelines.launchers import KfpTrialLauncher
from sftlab.signals import sigterm_interrupts
from sftlab.sources.specs import load_spec_source
from sftlab.spec.schema import Spec
from sftlab.sweep.runner import SweepPlan, SweepResult, launch
from sftlab.tracking.runs import Tracker


def launch_plan(spec: Spec, sweep_plan: SweepPlan) -> SweepResult:
    """Each pending trial as its own KFP run, at most ``pipeline.max_parallel_trials`` at a time."""
    launcher = KfpTrialLauncher(
        kfp_client(spec.pipeline.kfp_host),
        max_parallel=spec.pipeline.max_parallel_trials,
        experiment=spec.experiment,
        spec=spec,
        namespace=user_namespace(spec.pipeline.kfp_namespace),
    )
    return launch(Tracker.for_context(sweep_plan.context), sweep_plan, launcher)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec-file", type=Path, required=True, help="the sweep's spec parameter (YAML or s3:// URI)")
    parser.add_argument("--plan", type=Path, required=True, help="the plan step's trials Dataset")
    parser.add_argument("--counts", type=Path, required=True, help="where to write the trial counts (JSON)")
    args = parser.parse_args(argv)
    spec = load_spec_source(args.spec_file.read_text(encoding="utf-8"))
    with sigterm_interrupts():  # the sweep run cancelled: terminate the trial runs in flight first
        result = launch_plan(spec, read_plan(str(args.plan)))
    counts = {
        "trials": result.total,
        "skipped": result.skipped,
        "succeeded": result.succeeded,
        "failed": len(result.failed),
    }
    args.counts.write_text(json.dumps(counts), encoding="utf-8")


if __name__ == "__main__":
    main()
