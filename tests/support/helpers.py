"""What many tests share: the repository's paths, a free loopback port, the quickstart spec, the CLI."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from sftlab.spec.grid import Trial, expand
from sftlab.spec.job import TrialJob
from sftlab.spec.loading import load_spec
from sftlab.spec.schema import Spec

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def quickstart_spec(tmp_path: Path, **overrides: object) -> Spec:
    """The quickstart spec with its tracking root moved under ``tmp_path``."""
    spec = load_spec(EXAMPLES / "quickstart.yaml")
    spec.tracking.root = str(tmp_path / "runs")
    for key, value in overrides.items():
        setattr(spec, key, value)
    return spec


def first_trial(spec: Spec, **axes: object) -> Trial:
    return next(t for t in expand(spec) if all(t.axes.get(k) == v for k, v in axes.items()))


def run_cli(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 900
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sftlab.cli", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start_stage(stage: str, job: TrialJob, tmp_path: Path, out: str) -> subprocess.Popen[bytes]:
    """One stage of ``job`` in its own process, as a KFP task runs it, for tests that kill or signal it."""
    job_file = tmp_path / "job.json"
    job_file.write_text(job.to_json())
    script = (
        "import sys; from pathlib import Path; from sftlab.stages.common import run_stage; "
        f"run_stage({stage!r}, Path(sys.argv[1]).read_text(), sys.argv[2])"
    )
    return subprocess.Popen(
        [sys.executable, "-c", script, str(job_file), str(tmp_path / out)], env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
