"""Training rows one at a time, so profiling a 1M-row dataset never holds the dataset in memory.

Rows come from ``sftlab.sources.data.iter_rows`` (the one source reader) and are numbered as
``sftlab.sources.data.load_examples`` numbers them, so a row id in the profile names the same row
everywhere. Bad rows are reported with their ids, never fatal: the profile's job is to find them.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from sftlab.sources.data import Example, iter_rows, to_example
from sftlab.spec.job import RunContext
from sftlab.spec.schema import DatasetSpec

T = TypeVar("T")
MAX_LISTED = 1000  # bad rows listed by id in the profile; all are counted


def empty_response(row: dict[str, Any], ds: DatasetSpec) -> bool:
    """Whether a row's response exists as text but is blank (a format problem worth its own share)."""
    if ds.format == "messages":
        msgs = row.get("messages")
        value = msgs[-1].get("content") if isinstance(msgs, list) and msgs and isinstance(msgs[-1], dict) else None
    else:
        value = row.get("completion" if ds.format == "prompt_completion" else ds.response_field)
    return isinstance(value, str) and not value.strip()


@dataclass
class RowProblems:
    """Bad rows: all counted, the first ``MAX_LISTED`` listed with their ids."""

    count: int = 0
    empty_response: int = 0
    listed: list[tuple[int, str]] = field(default_factory=list)

    def add(self, row: int, reason: str, empty: bool = False) -> None:
        self.count += 1
        self.empty_response += int(empty)
        if len(self.listed) < MAX_LISTED:
            self.listed.append((row, reason))


def iter_examples(
    ds: DatasetSpec, template: str | None, ctx: RunContext, problems: RowProblems
) -> Iterator[tuple[int, Example]]:
    """(row id, Example) for every usable row; the others go to ``problems``, never raise."""
    for i, row in enumerate(iter_rows(ds.uri, ds.split, ctx, ds.subset)):
        if isinstance(row, str):
            problems.add(i, row)
            continue
        try:
            yield i, to_example(row, ds, template)
        except ValueError as exc:
            problems.add(i, str(exc), empty_response(row, ds))


class Reservoir(Generic[T]):
    """A seeded uniform sample of at most ``size`` items from a stream of unknown length (Algorithm R)."""

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.rng, self.seen = size, random.Random(seed), 0
        self.items: list[T] = []

    def add(self, item: T) -> None:
        if len(self.items) < self.size:
            self.items.append(item)
        else:
            j = self.rng.randrange(self.seen + 1)
            if j < self.size:
                self.items[j] = item
        self.seen += 1
