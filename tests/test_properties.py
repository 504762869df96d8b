"""Property-based tests (hypothesis): the spec loader and the answer extractors/scorers.

The spec loader must turn *any* YAML mapping into a Spec or a SpecError listing one-line problems
— never another exception; extractors must find planted answers whatever surrounds them.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sftlab.errors import SftlabError, SpecError
from sftlab.evals import gsm8k, judge, multiple_choice, qa
from sftlab.evals import math as math_task
from sftlab.spec.loading import parse_spec
from sftlab.spec.schema import Spec
from tests.support.helpers import EXAMPLES

QUICKSTART = yaml.safe_load((EXAMPLES / "quickstart.yaml").read_text())
FIELDS = [
    ("name",),
    ("prompt_template",),
    ("training", "epochs"),
    ("training", "method"),
    ("training", "learning_rate"),
    ("training", "global_batch_size"),
    ("training", "lora", "r"),
    ("evaluation", "epochs"),
    ("evaluation", "concurrency"),
    ("sweep",),
    ("sweep", "training.method"),
    ("benchmarks",),
    ("datasets",),
    ("base_models",),
    ("profile", "max_rows"),
    ("resources", "train"),
    ("pipeline", "max_parallel_trials"),
    ("unknown_key",),
    ("training", "unknown"),
]
ANY_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**6), 10**6) | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)
NO_DIGITS = st.text(
    alphabet=st.characters(blacklist_categories=("Nd", "Cs"), blacklist_characters="#$.,-"), max_size=30
)


def mutated(changes: list[tuple[tuple[str, ...], Any]]) -> dict[str, Any]:
    data = copy.deepcopy(QUICKSTART)
    for path, value in changes:
        node = data
        for key in path[:-1]:
            if not isinstance(node.get(key), dict):
                node[key] = {}
            node = node[key]
        node[path[-1]] = value
    return data


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(FIELDS), ANY_VALUE), min_size=1, max_size=4))
def test_any_mutated_spec_loads_or_lists_one_line_problems(changes: list[tuple[tuple[str, ...], Any]]) -> None:
    text = yaml.safe_dump(mutated(changes), allow_unicode=True)
    try:
        assert isinstance(parse_spec(text, base_dir=Path(EXAMPLES)), Spec)
    except SpecError as exc:
        assert exc.problems and all(p.strip() and "\n" not in p and ":" in p for p in exc.problems)
        assert "Traceback" not in str(exc)


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=200))
def test_any_text_spec_loads_or_fails_cleanly(text: str) -> None:
    try:
        parse_spec(text, base_dir=Path(EXAMPLES))
    except SpecError as exc:
        assert all("\n" not in p for p in exc.problems)


@given(st.integers(-(10**9), 10**9), NO_DIGITS, NO_DIGITS)
def test_gsm8k_finds_a_planted_final_number(n: int, before: str, after: str) -> None:
    assert gsm8k.is_correct(f"{before} #### {n}\n{after}", str(n))
    assert gsm8k.is_correct(f"{before} so the answer is {n:,}{after}", str(n))
    assert gsm8k.normalize_number(gsm8k.normalize_number(str(n))) == gsm8k.normalize_number(str(n))


@given(st.decimals(min_value=-(10**6), max_value=10**6, places=3, allow_nan=False, allow_infinity=False))
def test_gsm8k_numbers_compare_by_value(value: Any) -> None:
    assert gsm8k.normalize_number(f"{value}") == gsm8k.normalize_number(f"{value:f}0")


BALANCED = st.recursive(
    st.text(alphabet=st.characters(blacklist_characters="{}\\", blacklist_categories=("Cs",)), max_size=10),
    lambda inner: st.builds(lambda a, b: f"{a}{{{b}}}", inner, inner),
    max_leaves=4,
)


@given(BALANCED, NO_DIGITS)
def test_math_last_boxed_recovers_balanced_content(content: str, tail: str) -> None:
    text = f"work \\boxed{{0}} more \\boxed{{{content}}}{tail.replace(chr(92), '')}"
    assert math_task.last_boxed(text) == content
    assert math_task.is_equiv(content, content)


@given(st.text(max_size=40))
def test_qa_normalisation_is_idempotent_and_self_matching(text: str) -> None:
    once = qa.normalize(text)
    assert qa.normalize(once) == once
    if once and "\n" not in text.strip():
        assert qa.exact_match(text, [text]) and qa.lenient_match(text, [text])


@given(st.integers(1, 10), st.text(max_size=30).filter(lambda t: "[" not in t))
def test_judge_ratings_in_range_are_parsed(rating: int, prefix: str) -> None:
    assert judge.parse_rating(f"{prefix} Rating: [[{rating}]]") == rating


@given(st.lists(st.text(min_size=1, max_size=5), min_size=2, max_size=6, unique=True), st.data())
def test_multiple_choice_gold_by_index_letter_or_text(options: list[str], data: st.DataObject) -> None:
    """A digit-string answer is refused when a choice is a number too (index or text?), unless
    ``answer_index`` or ``answer_text`` says which; those two always name the choice."""
    i = data.draw(st.integers(0, len(options) - 1))
    numbers = any(o.isdecimal() for o in options)
    for answer in (i, chr(ord("A") + i), options[i]):
        item = {"question": "q", "choices": options, "answer": answer}
        if isinstance(answer, str) and len(answer) == 1 and answer.isalpha() and answer != chr(ord("A") + i):
            continue  # a one-letter choice text reads as a letter: ambiguous by construction
        if isinstance(answer, str) and answer.isdecimal() and numbers:
            with pytest.raises(SftlabError, match=rf"^answer {re.escape(repr(answer))} is ambiguous: .*answer_index"):
                multiple_choice.gold(item)
            continue
        assert multiple_choice.gold(item) == i
    for explicit in ({"answer_index": i}, {"answer_text": options[i]}, {"answer_index": i, "answer_text": options[i]}):
        # given with an answer that reads otherwise (or not at all): the explicit field wins
        assert multiple_choice.gold({"question": "q", "choices": options, "answer": "0", **explicit}) == i
