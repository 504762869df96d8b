"""Word n-grams as 64-bit hashes, computed for a chunk of rows at once.

Text is compared after lowercasing and whitespace splitting (punctuation stays attached), so
"The  Cat" and "the cat" share n-grams. Hashes, not strings, keep memory flat: a set of n-grams is
a numpy ``uint64`` array, and n-grams of many rows are built with a few vectorised operations
instead of a Python loop per n-gram. xxh3 keeps the hashes identical across processes and runs
(Python's ``hash`` is salted per process).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from xxhash import xxh3_64_intdigest

_MULT = np.uint64(0x9E3779B97F4A7C15)  # golden-ratio multiplier: spreads each step of the fold


def words(text: str) -> list[str]:
    """Lowercased whitespace tokens: the unit of every text measure here."""
    return text.lower().split()


def mix(values: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: an avalanching bijection on uint64 (multiplication wraps by design)."""
    with np.errstate(over="ignore"):
        z = values ^ (values >> np.uint64(30))
        z = z * np.uint64(0xBF58476D1CE4E5B9)
        z = z ^ (z >> np.uint64(27))
        z = z * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def fold(columns: np.ndarray) -> np.ndarray:
    """One order-sensitive uint64 hash per row of a 2-D uint64 array."""
    with np.errstate(over="ignore"):
        h = np.zeros(columns.shape[0], dtype=np.uint64)
        for k in range(columns.shape[1]):
            h = mix(h * _MULT + columns[:, k])
        return h


@dataclass
class HashedChunk:
    """The word hashes of a chunk of rows, concatenated, with each row's start offset."""

    word_hashes: np.ndarray  # uint64, all rows' words in order
    offsets: np.ndarray  # int64, len(rows) + 1

    @classmethod
    def of(cls, texts: list[str]) -> HashedChunk:
        counts = np.zeros(len(texts) + 1, dtype=np.int64)
        flat: list[str] = []
        for i, text in enumerate(texts):
            w = words(text)
            flat.extend(w)
            counts[i + 1] = len(w)
        hashes = np.fromiter((xxh3_64_intdigest(w.encode()) for w in flat), dtype=np.uint64, count=len(flat))
        return cls(hashes, np.cumsum(counts))

    @property
    def rows(self) -> int:
        return len(self.offsets) - 1

    def word_counts(self) -> np.ndarray:
        return np.diff(self.offsets)

    def ngrams(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(hash, row) of every word n-gram that lies inside one row, in row order."""
        total = len(self.word_hashes)
        if total < n:
            return np.empty(0, dtype=np.uint64), np.empty(0, dtype=np.int64)
        row_of_word = np.repeat(np.arange(self.rows), self.word_counts())
        starts = np.arange(total - n + 1)
        inside = row_of_word[starts] == row_of_word[starts + n - 1]
        columns = np.stack([self.word_hashes[k : total - n + 1 + k] for k in range(n)], axis=1)
        hashes = fold(columns[inside]) if n > 1 else self.word_hashes[: total - n + 1][inside]
        return hashes, row_of_word[starts[inside]]


def ngram_set(texts: list[str], n: int) -> np.ndarray:
    """The sorted distinct n-gram hashes of some texts."""
    return np.unique(HashedChunk.of(texts).ngrams(n)[0])
