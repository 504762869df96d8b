"""Run one trial's pipeline through ``kfp.local``: the child process ``LocalTrialLauncher`` starts.

``python -m sftlab.kfp.pipelines.local_trial --job-file JOB.json --root DIR``. One process per trial
because kfp.local's configuration is process-global. Exits non-zero if any task fails; the
parent reads the cause from this process's output (the trial's log).
"""

import argparse
import warnings
from pathlib import Path

from kfp import local

from sftlab.kfp.pipelines.trial import build_trial_pipeline


def run_local_trial(job_json: str, root: Path) -> None:
    """Run the trial pipeline on ``job_json`` with task subprocesses in this environment."""
    local.init(
        runner=local.SubprocessRunner(use_venv=False),  # this environment already has sftlab
        pipeline_root=str(root / "outputs"),
        workspace_root=str(root / "workspace"),  # else kfp.local leaves a temp dir behind per run
        raise_on_error=True,
    )
    build_trial_pipeline(None, retries=False)(job=job_json)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--job-file", type=Path, required=True, help="TrialJob JSON")
    parser.add_argument("--root", type=Path, required=True, help="folder for kfp.local's outputs")
    args = parser.parse_args(argv)
    # kfp.local warns on every task that an image without "python" in its name may not match.
    warnings.filterwarnings("ignore", message="You may be attemping", category=RuntimeWarning)
    run_local_trial(args.job_file.read_text(encoding="utf-8"), args.root)


if __name__ == "__main__":
    main()
