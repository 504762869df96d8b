"""Benchmark tasks by ``kind``: each in the module named after its kind, its settings in the kind's
class in ``sftlab.spec.schema`` (see ``sftlab.evals.base`` for what a task is)."""

from __future__ import annotations

import importlib
from typing import Any

from sftlab.evals.base import Task

# kind -> the task in sftlab.evals.<kind>, imported on first use (the code tasks pull in the sandbox).
TASKS = {
    "gsm8k": "GSM8K",
    "math": "MATH",
    "humaneval": "HUMANEVAL",
    "mbpp": "MBPP",
    "multiple_choice": "MULTIPLE_CHOICE",
    "qa": "SHORT_ANSWER",
    "judge": "JUDGE",
}


def task_for(kind: str) -> Task[Any]:
    task: Task[Any] = getattr(importlib.import_module(f"sftlab.evals.{kind}"), TASKS[kind])
    return task
