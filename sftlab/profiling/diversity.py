"""Diversity over the whole dataset in bounded memory: distinct-n, exact and near duplicates.

- distinct-n (Li et al. 2016): distinct word n-grams / all word n-grams of the *responses*
  (lowercased whitespace words, not model tokens, so it is comparable across base models).
  Distinct n-grams are counted with a K-minimum-values sketch over 64-bit hashes: exact while
  fewer than ``SKETCH_SIZE`` (262k) distinct n-grams were seen, then an unbiased estimate
  (relative error ~1/sqrt(K) = 0.2 %), so any dataset costs at most ~2 MB kept per n.
- exact duplicates: rows whose full text (prompt and response) equals an earlier row's.
- near duplicates: rows that share a MinHash LSH bucket (word-shingle Jaccard above the
  threshold, banding chosen by ``datasketch.MinHashLSH``) with an earlier row; exact duplicates
  count too. Signatures come from ``datasketch.MinHash``; only the band keys (8 bytes per band per
  row) are kept, and collisions are found at the end with ``np.unique`` instead of a Python index.
"""

from __future__ import annotations

import numpy as np
from xxhash import xxh3_64_intdigest

from sftlab.profiling.ngrams import HashedChunk, fold

SKETCH_SIZE = 1 << 18
_MAX64 = float(2**64)


class DistinctCounter:
    """Distinct count of a stream of uint64 hashes (K-minimum-values; exact below K)."""

    def __init__(self, k: int = SKETCH_SIZE) -> None:
        self.k = k
        self.kept = np.empty(0, dtype=np.uint64)
        self.pending: list[np.ndarray] = []
        self.pending_size = 0
        self.total = 0  # all hashes seen, duplicates included

    def add(self, hashes: np.ndarray) -> None:
        self.total += len(hashes)
        if len(self.kept) == self.k:  # saturated: only hashes below the k-th smallest can matter
            hashes = hashes[hashes < self.kept[-1]]
        self.pending.append(hashes)
        self.pending_size += len(hashes)
        if self.pending_size >= self.k // 4:  # small buffer: peak memory stays ~2.5 K hashes
            self._compact()

    def _compact(self) -> None:
        if self.pending:
            self.kept = np.unique(np.concatenate([self.kept, *self.pending]))[: self.k].copy()
            self.pending, self.pending_size = [], 0

    def distinct(self) -> float:
        self._compact()
        if len(self.kept) < self.k:
            return float(len(self.kept))
        return (self.k - 1) / (float(self.kept[-1]) / _MAX64)  # KMV estimator


class DistinctN:
    """distinct-1..N over a stream of response chunks."""

    def __init__(self, max_n: int = 3, k: int = SKETCH_SIZE) -> None:
        self.counters = {n: DistinctCounter(k) for n in range(1, max_n + 1)}

    def add(self, chunk: HashedChunk) -> None:
        for n, counter in self.counters.items():
            counter.add(chunk.ngrams(n)[0])

    def values(self) -> dict[int, float]:
        return {n: (c.distinct() / c.total if c.total else 0.0) for n, c in self.counters.items()}


def _shingle_lists(chunk: HashedChunk, shingle: int) -> list[np.ndarray]:
    """Each row's word-shingle hashes (32-bit, as MinHash's affine32 scheme expects).

    A row shorter than a shingle is one shingle of all its words, so short rows still compare.
    """
    hashes, rows = chunk.ngrams(shingle)
    bounds = np.searchsorted(rows, np.arange(chunk.rows + 1))
    out = []
    for i in range(chunk.rows):
        mine = hashes[bounds[i] : bounds[i + 1]]
        if not len(mine):
            whole = chunk.word_hashes[chunk.offsets[i] : chunk.offsets[i + 1]]
            mine = fold(whole[None, :]) if len(whole) else np.zeros(1, dtype=np.uint64)
        out.append(mine & np.uint64(0xFFFFFFFF))
    return out


class DuplicateFinder:
    """Exact and near-duplicate rates of a stream of rows."""

    def __init__(self, threshold: float, num_perm: int, shingle: int, seed: int = 1) -> None:
        from datasketch import MinHash, MinHashLSH

        lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
        self.bands, self.band_rows = lsh.b, lsh.r
        self.shingle = shingle
        self.minhash = MinHash(num_perm=num_perm, seed=seed, hashfunc=int)
        self.exact: list[np.ndarray] = []
        self.band_keys: list[np.ndarray] = []

    def signatures(self, chunk: HashedChunk) -> np.ndarray:
        """MinHash signatures (rows x num_perm) of a chunk, one datasketch MinHash per row."""
        out = np.empty((chunk.rows, self.minhash.num_perm), dtype=np.uint64)
        for i, shingles in enumerate(_shingle_lists(chunk, self.shingle)):
            self.minhash.clear()
            self.minhash.update_batch(shingles.tolist())
            out[i] = self.minhash.hashvalues
        return out

    def add(self, texts: list[str], chunk: HashedChunk) -> None:
        """``texts`` are the rows' exact full texts; ``chunk`` their hashed words."""
        self.exact.append(
            np.fromiter((xxh3_64_intdigest(t.encode()) for t in texts), dtype=np.uint64, count=len(texts))
        )
        sig = self.signatures(chunk)
        r = self.band_rows
        self.band_keys.append(np.stack([fold(sig[:, b * r : (b + 1) * r]) for b in range(self.bands)], axis=1))

    def rates(self) -> tuple[float, float, list[int]]:
        """(exact-duplicate rate, near-duplicate rate, ids of exact-duplicate rows)."""
        if not self.exact:
            return 0.0, 0.0, []
        exact = _repeats(np.concatenate(self.exact))
        keys = np.concatenate(self.band_keys)
        near = np.zeros(len(keys), dtype=bool)
        for b in range(keys.shape[1]):
            near |= _repeats(keys[:, b])
        return float(exact.mean()), float(near.mean()), np.flatnonzero(exact).tolist()


def _repeats(values: np.ndarray) -> np.ndarray:
    """True where a value already occurred at an earlier position."""
    _, first, inverse = np.unique(values, return_index=True, return_inverse=True)
    return first[inverse.ravel()] != np.arange(len(values))
