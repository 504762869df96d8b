"""The launcher interface: how a sweep hands trials to something that runs them.

Two implementations live in the KFP layer (``sftlab.kfp.pipelines.launchers``): locally, each trial's
pipeline runs through ``kfp.local``; on a cluster, each trial is its own KFP run submitted with
``kfp.Client`` (a workflow of workflows: one Argo object per trial, not one huge run). The CLI,
the sweep pipeline and the tests all go through this interface.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from sftlab.spec.grid import Trial
from sftlab.spec.job import TrialJob


@dataclass(frozen=True)
class TrialOutcome:
    key: str
    run_id: str
    ok: bool
    error: str | None = None
    seconds: float = 0.0


StartTrial = Callable[[Trial], TrialJob]
FinishTrial = Callable[[TrialJob, TrialOutcome], None]


class TrialLauncher(Protocol):
    def run(self, trials: Sequence[Trial], start: StartTrial, finish: FinishTrial) -> None:
        """Run every trial; call ``start`` just before and ``finish`` right after each one.

        A failing trial must not stop the others: it is reported through ``finish``.
        """
        ...

    def log_path(self, trial_key: str) -> Path | None:
        """Where the trial's whole output goes, when it goes to a file here."""
        ...

    def progress_path(self, trial_key: str) -> Path | None:
        """Where the trial's stages report progress (``sftlab.progress``), when they can reach this machine."""
        ...
