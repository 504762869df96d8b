"""MBPP (Austin et al. 2021, the ``mbpp`` items): prompts as lm-evaluation-harness's ``mbpp`` task
("You are an expert Python programmer ... [BEGIN]"), with ``num_fewshot`` other items as examples
(a ``template`` set on the benchmark itself wraps each problem instead); generation stops at
``[DONE]``; the program is ``test_setup_code``, the completion, then every ``test_list`` assert.
Sampling, the sandbox and pass@k: ``sftlab.evals.code``.
"""

from __future__ import annotations

from typing import Any

from sftlab.errors import SftlabError
from sftlab.evals.base import fewshot_prompts, require_str
from sftlab.evals.code import CodeTask
from sftlab.spec.schema import CodeBenchmark

MBPP_STOP = ("[DONE]",)  # lm-evaluation-harness mbpp
# lm-evaluation-harness mbpp: doc_to_text + "[BEGIN]\n", target "{code}\n[DONE]", shots joined by "\n\n".
MBPP_TEMPLATE = "{instruction}[BEGIN]\n{response}"
MBPP_TASK = (
    "You are an expert Python programmer, and here is your task: {text} Your code should pass these tests:\n\n{tests}\n"
)


class MBPPTask(CodeTask):
    stop = MBPP_STOP

    def check_item(self, item: dict[str, Any]) -> None:
        if item.get("task_id") is None:
            raise SftlabError("missing field 'task_id'")
        if not isinstance(_mbpp_text(item), str):
            raise SftlabError("missing string field 'text' (or 'prompt', as in MBPP's sanitized subset)")
        require_str(item, "code")
        tests = item.get("test_list")
        if not isinstance(tests, list) or not tests or not all(isinstance(t, str) and t.strip() for t in tests):
            raise SftlabError("missing field 'test_list' (a non-empty list of assert statements)")
        if not isinstance(item.get("test_setup_code", ""), str):
            raise SftlabError("field 'test_setup_code' must be a string")
        imports = item.get("test_imports") or []
        if not isinstance(imports, list) or not all(isinstance(line, str) for line in imports):
            raise SftlabError("field 'test_imports' must be a list of import statements")

    def prompts(self, bench: CodeBenchmark, items: list[dict[str, Any]], template: str | None) -> list[str]:
        return fewshot_prompts(bench, items, MBPP_TEMPLATE, _mbpp_task, lambda item: item["code"] + "\n[DONE]")

    def program(self, item: dict[str, Any], completion: str) -> str:
        setup = [*(item.get("test_imports") or []), item.get("test_setup_code", "")]
        return "\n".join([*setup, completion, *item["test_list"]])


def _mbpp_text(item: dict[str, Any]) -> str | None:
    """The problem statement: ``text`` in the full set, ``prompt`` in the sanitized subset."""
    return item.get("text") or item.get("prompt")


def _mbpp_task(item: dict[str, Any]) -> str:
    return MBPP_TASK.format(text=_mbpp_text(item), tests="\n".join(item["test_list"]))


MBPP = MBPPTask()
