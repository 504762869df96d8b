"""GSM8K answer extraction and scoring (lm-evaluation-harness conventions)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sftlab.errors import SftlabError
from sftlab.evals.gsm8k import (
    STOP_SEQUENCES,
    extract_answer,
    is_correct,
    normalize_number,
    reference_answer,
)
from sftlab.evals.scoring import benchmark_items
from sftlab.spec.job import RunContext
from sftlab.spec.schema import Gsm8kBenchmark


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("She has 5 + 3 = 8 apples.\n#### 8", "8"),
        ("#### 1,234", "1234"),
        ("#### 42.", "42"),
        ("#### -7", "-7"),
        ("Total is $1,000.50 after tax.", "1000.50"),
        ("He owes -$5 now.", "-5"),
        ("The answer is 18.", "18"),
        ("First 3 apples, then 4 pears, so 7 fruits in all", "7"),
        ("It drops to -12 degrees", "-12"),
        ("#### 72\nQuestion: How many pens does Ben have?\nAnswer: 9", "72"),
        ("So we get 10 + 2 = 12 ... and that is it...", "12"),
        ("I am not sure.", None),
        ("", None),
        ("Costs were $... unclear", None),
    ],
)
def test_extract_answer(text: str, expected: str | None) -> None:
    assert extract_answer(text) == expected


def test_strict_match_wins_over_a_later_number() -> None:
    assert extract_answer("#### 5\nBonus: 99 more steps, 100 in all") == "5"


def test_flexible_extract_takes_the_last_number() -> None:
    assert extract_answer("Step 1: 4 * 2 = 8. Step 2: 8 + 1 = 9 apples") == "9"


def test_strict_marker_without_a_number_falls_back_to_flexible() -> None:
    assert extract_answer("#### . so the answer is 6") == "6"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1,000.00", "1000"),
        ("7.0", "7"),
        ("-3.", "-3"),
        ("$12", "12"),
        ("0.50", "0.5"),
        ("-0", "0"),
        ("1000", "1000"),
        (" 42 ", "42"),
        ("1.2.3", "1.2.3"),
    ],
)
def test_normalize_number(raw: str, expected: str) -> None:
    assert normalize_number(raw) == expected


def test_reference_answer() -> None:
    assert reference_answer("Natalia sold 48/2 = <<48/2=24>>24 clips.\n#### 1,072") == "1072"
    assert reference_answer("x\n#### -4.0") == "-4"
    with pytest.raises(SftlabError, match="no '#### <number>'"):
        reference_answer("The answer is 5")


@pytest.mark.parametrize(
    ("generation", "reference", "correct"),
    [
        ("3 + 4 = 7\n#### 7", "7", True),
        ("The total is $1,000.", "1000", True),
        ("It is 7.0 in the end.", "7", True),
        ("#### 8", "7", False),
        ("No idea.", "7", False),
        ("-3 degrees", "3", False),
    ],
)
def test_is_correct(generation: str, reference: str, correct: bool) -> None:
    assert is_correct(generation, reference) is correct


def test_stop_sequences_cover_fewshot_and_chat_turns() -> None:
    assert {"Question:", "\n\n", "<|im_end|>"} <= set(STOP_SEQUENCES)


def benchmark(path: Path) -> Gsm8kBenchmark:
    return Gsm8kBenchmark(name="b", uri=str(path))


def context(tmp_path: Path) -> RunContext:
    return RunContext(tracking_uri="sqlite:///unused.db", experiment="x", root=str(tmp_path))


def test_benchmark_items(tmp_path: Path) -> None:
    path = tmp_path / "gsm8k.jsonl"
    rows = [{"question": "Ana has 2 pens and gets 3 more. How many?", "answer": "2 + 3 = 5\n#### 5"}]
    path.write_text(json.dumps(rows[0]) + "\n\n" + json.dumps({**rows[0], "answer": "#### 1,000"}) + "\n")
    items = benchmark_items(benchmark(path), context(tmp_path))
    assert [reference_answer(i["answer"]) for i in items] == ["5", "1000"]


@pytest.mark.parametrize(
    ("line", "where", "problem"),
    [
        ("{not json", "bad.jsonl:2: ", "not valid JSON"),
        ("[1, 2]", "bad.jsonl:2: ", "expected a JSON object"),
        ('{"question": "q"}', "item 1: ", "missing non-empty string field 'answer'"),
        ('{"question": "q", "answer": "five"}', "item 1: ", "no '#### <number>'"),
    ],
)
def test_bad_benchmark_items_name_file_and_item(tmp_path: Path, line: str, where: str, problem: str) -> None:
    """Checked before any model server starts, each as one line naming the file and the item."""
    path = tmp_path / "bad.jsonl"
    path.write_text('{"question": "q", "answer": "#### 1"}\n' + line + "\n")
    with pytest.raises(SftlabError) as info:
        benchmark_items(benchmark(path), context(tmp_path))
    message = str(info.value)
    assert str(path) in message and where in message and problem in message and "\n" not in message


def test_benchmark_items_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SftlabError, match="nope.jsonl: no such file or folder"):
        benchmark_items(benchmark(tmp_path / "nope.jsonl"), context(tmp_path))
