"""Surface similarity of the training data to one evaluation benchmark, and contamination.

Both are streamed: the benchmark's n-gram hashes (small) are held in memory and each chunk of
training rows marks which of them it contains, so the training data is never held at once.

- n-gram overlap (n = 1..3 by default): share of the benchmark's distinct word n-grams that
  occur anywhere in the training data (question and answer text of the benchmark; prompt and
  response of the training rows).
- contamination: benchmark items sharing at least one word ``contamination_n``-gram (13, as in
  GPT-3's contamination study) with a training row, lowercased and whitespace-normalised. Items
  shorter than n words cannot be flagged; their count is reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sftlab.profiling.ngrams import HashedChunk


def benchmark_text(item: dict[str, Any]) -> str:
    """An item's text, whatever the benchmark's format: its string fields (and lists of strings), ids left out."""
    parts: list[str] = []
    for key, value in item.items():
        if key.lower().endswith("id"):
            continue
        if isinstance(value, str):
            parts.append(value)
        elif isinstance(value, list):
            parts.extend(v for v in value if isinstance(v, str))
    return "\n".join(parts)


@dataclass
class ContaminatedItem:
    item: int  # index in the benchmark file
    train_row: int  # first training row sharing an n-gram with it
    ngram: str  # the shared n-gram, as the item spells it


@dataclass
class BenchmarkOverlap:
    """Streaming n-gram overlap and contamination of training data against one benchmark."""

    name: str
    items: list[dict[str, Any]]
    overlap_ns: tuple[int, ...]
    contamination_n: int
    _grams: dict[int, np.ndarray] = field(init=False)  # sorted distinct benchmark n-grams
    _found: dict[int, np.ndarray] = field(init=False)  # bool per benchmark n-gram
    _first_row: dict[int, int] = field(init=False, default_factory=dict)  # contamination n-gram -> train row

    def __post_init__(self) -> None:
        chunk = HashedChunk.of([benchmark_text(it) for it in self.items])
        self._item_grams = chunk.ngrams(self.contamination_n)
        ns = set(self.overlap_ns) | {self.contamination_n}
        self._grams = {n: np.unique(chunk.ngrams(n)[0]) for n in ns}
        self._found = {n: np.zeros(len(g), dtype=bool) for n, g in self._grams.items()}
        self._short_items = int((chunk.word_counts() < self.contamination_n).sum())

    def add(self, chunk: HashedChunk, first_row: int) -> None:
        """Mark the benchmark n-grams found in a chunk of training rows numbered from ``first_row``."""
        for n, grams in self._grams.items():
            if not len(grams):
                continue
            hashes, rows = chunk.ngrams(n)
            self._found[n] |= np.isin(grams, hashes)
            if n == self.contamination_n:
                hit = np.isin(hashes, grams)
                for h, r in zip(hashes[hit].tolist(), rows[hit].tolist(), strict=True):
                    self._first_row.setdefault(h, first_row + r)

    def overlaps(self) -> dict[int, float]:
        return {n: float(self._found[n].mean()) if len(self._grams[n]) else 0.0 for n in self.overlap_ns}

    def contaminated(self) -> list[ContaminatedItem]:
        hashes, items = self._item_grams
        out: dict[int, ContaminatedItem] = {}
        n = self.contamination_n
        for pos, (h, item) in enumerate(zip(hashes.tolist(), items.tolist(), strict=True)):
            if h in self._first_row and item not in out:
                out[item] = ContaminatedItem(
                    item, self._first_row[h], _ngram_text(self.items[item], hashes, items, pos, n)
                )
        return sorted(out.values(), key=lambda c: c.item)

    @property
    def short_items(self) -> int:
        return self._short_items


def _ngram_text(item: dict[str, Any], hashes: np.ndarray, items: np.ndarray, pos: int, n: int) -> str:
    """The words of the item's n-gram at global position ``pos`` (n-grams of an item are consecutive)."""
    start = pos - int(np.searchsorted(items, items[pos]))
    words = benchmark_text(item).lower().split()
    return " ".join(words[start : start + n])
