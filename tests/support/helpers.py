"""What many tests share: the repository's paths, a free loopback port, the quickstart spec, the CLI."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from sftlab.spec.grid import Trial, expand
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
