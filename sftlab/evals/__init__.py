"""Benchmark tasks by ``BenchmarkSpec.kind`` (see ``sftlab.evals.base`` for what a task is)."""

from __future__ import annotations

import importlib

from sftlab.evals.base import Task

# kind -> "module:attribute", imported on first use (the code task pulls in the sandbox).
_TASKS = {
    "gsm8k": "sftlab.evals.gsm8k:GSM8K",
    "math": "sftlab.evals.math_answers:MATH",
    "humaneval": "sftlab.evals.code:HUMANEVAL",
    "mbpp": "sftlab.evals.code:MBPP",
    "multiple_choice": "sftlab.evals.choice:MULTIPLE_CHOICE",
    "qa": "sftlab.evals.qa:SHORT_ANSWER",
    "judge": "sftlab.evals.judge:JUDGE",
}


def task_for(kind: str) -> Task:
    module, attribute = _TASKS[kind].split(":")
    return getattr(importlib.import_module(module), attribute)
