"""The tracking server goes away mid-trial and comes back: nothing logged is lost or doubled.

A real ``mlflow server`` (sqlite backend) is killed while a training-like loop logs per-step
metrics, and restarted on the same port a few seconds later. MLflow's client retries with
exponential backoff (``MLFLOW_HTTP_REQUEST_MAX_RETRIES``/``BACKOFF_FACTOR``), so the loop just
waits; afterwards every step is there exactly once and the run count is unchanged.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from sftlab.tracking.runs import Tracker
from tests.support.helpers import free_port

pytestmark = pytest.mark.slow


def start_server(root: Path, port: int) -> subprocess.Popen[bytes]:
    log = open(root / f"server-{time.monotonic_ns()}.log", "wb")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{root / 'mlflow.db'}",
            "--default-artifact-root",
            str(root / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).text.strip() == "OK":
                return proc
        except httpx.HTTPError:
            time.sleep(0.5)
    proc.kill()
    raise AssertionError("mlflow server did not start")


def stop(proc: subprocess.Popen[bytes]) -> None:
    os.killpg(proc.pid, signal.SIGKILL)  # the server and its workers, as a crashed pod would lose them
    proc.wait(10)


@pytest.mark.parametrize(
    ("down_s", "outages"),
    [pytest.param(3.0, 1, id="3s"), pytest.param(40.0, 3, marks=pytest.mark.soak, id="soak-3x40s")],
)
def test_metrics_logged_during_an_outage_arrive_once(tmp_path: Path, down_s: float, outages: int) -> None:
    port = free_port()
    server = start_server(tmp_path, port)
    try:
        tracker = Tracker(f"http://127.0.0.1:{port}", "outage")
        run_id = tracker.create_run("trial", "t")
        steps, errors = 40 * outages, []

        def training_loop() -> None:
            try:
                for step in range(steps):
                    tracker.log_metric_steps(run_id, [(step, {"train/loss": 1.0 / (step + 1)})])
                    time.sleep(0.1)
                tracker.finish(run_id)
            except Exception as exc:  # noqa: BLE001 - reported by the assertion below
                errors.append(exc)

        loop = threading.Thread(target=training_loop)
        loop.start()
        for _ in range(outages):
            time.sleep(1.0)
            stop(server)  # mid-loop
            time.sleep(down_s)
            server = start_server(tmp_path, port)  # back, same address, same store
        loop.join(300 * outages)
        assert not loop.is_alive() and not errors, errors
        history = tracker.client.get_metric_history(run_id, "train/loss")
        assert sorted(m.step for m in history) == list(range(steps))  # every step, once
        assert tracker.client.get_run(run_id).info.status == "FINISHED"
        assert len(list(tracker.search("tags.`sftlab.stage` = 'trial'"))) == 1  # no duplicate runs
    finally:
        stop(server)
