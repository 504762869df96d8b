"""MATH (Hendrycks et al. 2021): the final ``\\boxed{}`` answer, normalised and compared as strings.

Extraction and normalisation follow the reference implementation (``math_equivalence.py`` of
hendrycks/math, also used by lm-evaluation-harness's ``hendrycks_math``): the last
``\\boxed{...}`` (or ``\\boxed ...``/``\\fbox{...}``) in the text, then ``strip_string`` — units,
spaces, ``\\left``/``\\right``, ``dfrac``/``tfrac``, ``a/b`` → ``\\frac{a}{b}``, ``\\sqrt2`` →
``\\sqrt{2}``, leading ``0.``, ``x = `` prefixes. A generation without a boxed answer falls back
to Minerva's "The final answer is X" phrasing.
"""

from __future__ import annotations

import re
from typing import Any

from sftlab.errors import SftlabError
from sftlab.evals.base import BenchmarkScore, GeneratingTask, Generator, fewshot_prompts, fit_columns, require_str
from sftlab.spec.schema import MathBenchmark

FINAL_ANSWER_RE = re.compile(
    r"final answer is\s*\$?(.+?)\$?(?:\.\s*I hope it is correct)?\.?\s*$", re.IGNORECASE | re.MULTILINE
)


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` / ``\\fbox{...}`` (balanced braces) or ``\\boxed x``."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    rest = text[start:]
    if rest.startswith("\\boxed "):  # "\boxed 5$"
        return rest[len("\\boxed ") :].split("$")[0].strip()
    open_at = rest.find("{")
    if open_at < 0:
        return None
    depth = 0
    for i, ch in enumerate(rest[open_at:], open_at):
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return rest[open_at + 1 : i]
    return None  # unbalanced: the generation was cut off


def extract_answer(text: str) -> str | None:
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    found = FINAL_ANSWER_RE.findall(text)
    return found[-1].strip() if found else None


def reference_answer(item: dict[str, Any]) -> str:
    """The item's ``answer`` field if given, else the last boxed answer of its ``solution``."""
    if isinstance(item.get("answer"), str) and item["answer"].strip():
        return item["answer"]
    boxed = last_boxed(item.get("solution") or "")
    if boxed is None:
        raise SftlabError("MATH solution has no \\boxed{...} answer and there is no 'answer' field")
    return boxed


# --- normalisation: hendrycks/math math_equivalence.py -------------------------------------


def _fix_fracs(string: str) -> str:
    substrs = string.split("\\frac")
    new_str = substrs[0]
    for substr in substrs[1:]:
        new_str += "\\frac"
        if substr and substr[0] == "{":
            new_str += substr
            continue
        if len(substr) < 2:
            return string
        a, b = substr[0], substr[1]
        if b != "{":
            new_str += "{" + a + "}{" + b + "}" + substr[2:]
        else:
            new_str += "{" + a + "}" + b + substr[2:]
    return new_str


def _fix_a_slash_b(string: str) -> str:
    parts = string.split("/")
    if len(parts) != 2:
        return string
    try:
        a, b = int(parts[0]), int(parts[1])
    except ValueError:
        return string
    return f"\\frac{{{a}}}{{{b}}}" if string == f"{a}/{b}" else string


def _remove_right_units(string: str) -> str:
    return string.split("\\text{ ")[0] if "\\text{ " in string else string


def _fix_sqrt(string: str) -> str:
    if "\\sqrt" not in string:
        return string
    splits = string.split("\\sqrt")
    new_string = splits[0]
    for split in splits[1:]:
        if split and split[0] != "{":
            new_string += "\\sqrt{" + split[0] + "}" + split[1:]
        else:
            new_string += "\\sqrt" + split
    return new_string


def strip_string(string: str) -> str:
    string = string.replace("\n", "").replace("\\!", "").replace("\\\\", "\\")
    string = string.replace("tfrac", "frac").replace("dfrac", "frac")
    string = string.replace("\\left", "").replace("\\right", "")
    string = string.replace("^{\\circ}", "").replace("^\\circ", "")
    string = string.replace("\\$", "")
    string = _remove_right_units(string)
    string = string.replace("\\%", "").replace("%", "")
    string = string.replace(" .", " 0.").replace("{.", "{0.")
    if not string:
        return string
    if string[0] == ".":
        string = "0" + string
    if len(string.split("=")) == 2 and len(string.split("=")[0]) <= 2:  # "x = 5" -> "5"
        string = string.split("=")[1]
    string = _fix_sqrt(string)
    string = string.replace(" ", "")
    string = _fix_fracs(string)
    if string == "0.5":
        string = "\\frac{1}{2}"
    return _fix_a_slash_b(string)


def is_equiv(answer: str | None, reference: str | None) -> bool:
    if answer is None or reference is None:
        return answer is None and reference is None
    try:
        return strip_string(answer) == strip_string(reference)
    except Exception:  # noqa: BLE001 - the reference falls back to raw comparison on odd strings
        return answer == reference


class MathTask(GeneratingTask[MathBenchmark]):
    """Generate a solution; score the boxed answer (exact match after normalisation)."""

    def check_item(self, item: dict[str, Any]) -> None:
        require_str(item, "problem")
        reference_answer(item)

    def score(
        self, model: Generator, bench: MathBenchmark, items: list[dict[str, Any]], template: str | None
    ) -> BenchmarkScore:
        prompts = fewshot_prompts(
            bench, items, template, lambda it: it["problem"], lambda it: it.get("solution") or it["answer"]
        )
        marker = self.question_marker(bench, template)
        stops = [s for s in (marker, "<|im_end|>") if s]
        outputs = model.complete(prompts, max_tokens=bench.max_new_tokens, stop=stops)
        rows: list[dict[str, Any]] = []
        for prompt, item, output in zip(prompts, items, outputs, strict=True):
            reference = reference_answer(item)
            extracted = extract_answer(output)
            rows.append(
                {
                    "prompt": prompt,
                    "output": str(output),
                    "reference": reference,
                    "extracted": extracted,
                    "score": float(is_equiv(extracted, reference)),
                    **fit_columns(output),
                }
            )
        return BenchmarkScore({"exact_match": sum(r["score"] for r in rows) / len(rows)}, rows)


MATH = MathTask()
