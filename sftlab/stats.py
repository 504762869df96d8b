"""sftlab's statistics, in one place: bootstrap CIs, rank correlations, mean CIs, multiple-testing control.

Scores, gains, perplexities and every number in the report get their intervals and tests here, at one
confidence level: the spec's ``evaluation.confidence`` (default ``DEFAULT_CONFIDENCE``), passed in by the
caller. The plain cases are scipy's (``scipy.stats.bootstrap`` percentile intervals, paired where the
data are, ``ttest_1samp`` for t intervals and tests, ``false_discovery_control`` for Benjamini–Hochberg),
so they are the textbook procedures and not our copies of them; scipy has no Holm, so Holm is a short
step-down below. The stratified Spearman bootstrap stays hand-written: a sweep report computes
thousands of correlations, and it is vectorised over resamples (in chunks, so memory stays near
100 MB even at a thousand trials × 80 layers) where ``scipy.stats.bootstrap`` would call
``spearmanr`` once per resample.
"""

from __future__ import annotations

import itertools
import math
import statistics
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np

DEFAULT_CONFIDENCE = 0.95  # the spec's evaluation.confidence default: CI coverage; 1 - it is every test's α
BOOTSTRAP = 1000  # resamples per CI: percentile CIs need ~1,000 (Efron & Tibshirani 1993, ch. 13)
EXACT_MAX_N = 8  # up to here p is exact (all n! permutations); the t approximation is anti-conservative for tiny n
_CHUNK_CELLS = 4_000_000  # resample × row × column values held at once (float64: ~32 MB per array)


def alpha(confidence: float) -> float:
    """The significance level that goes with a confidence level: a test rejects where the CI excludes 0."""
    return round(1.0 - confidence, 12)  # 0.05 for 0.95, not 0.050000000000000044


def percentile_ci(
    data: Sequence[np.ndarray],
    statistic: Callable[..., np.ndarray],
    resamples: int,
    confidence: float,
    seed: int,
    paired: bool = False,
) -> tuple[float, float]:
    """Percentile-bootstrap CI of ``statistic(*data, axis=-1)`` (vectorised), ``scipy.stats.bootstrap``.

    ``paired``: the samples are resampled together (the same items for both, or a ratio's numerator and
    denominator). Seeded: the same seed gives the same resamples, so the same interval. One observation
    has no spread to resample: its interval is the point.
    """
    from scipy.stats import bootstrap

    arrays = [np.asarray(d, dtype=float) for d in data]
    if arrays[0].size < 2:
        point = float(statistic(*arrays, axis=-1))
        return point, point
    result = bootstrap(
        arrays,
        statistic,
        n_resamples=resamples,
        vectorized=True,
        paired=paired,
        confidence_level=confidence,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def _mean(values: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(values, axis=axis)


def _mean_difference(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(a, axis=axis) - np.mean(b, axis=axis)


def bootstrap_ci(values: Sequence[float], resamples: int, confidence: float, seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap CI of the mean of ``values``."""
    if not len(values):
        raise ValueError("bootstrap of no values")
    return percentile_ci([np.asarray(values, dtype=float)], _mean, resamples, confidence, seed)


def paired_bootstrap_ci(
    a: Sequence[float], b: Sequence[float], resamples: int, confidence: float, seed: int = 0
) -> tuple[float, float]:
    """Percentile-bootstrap CI of mean(a) − mean(b) over paired observations (item i of a with item i of b)."""
    if len(a) != len(b) or not len(a):
        raise ValueError(f"paired bootstrap needs two samples of one non-zero length, got {len(a)} and {len(b)}")
    data = [np.asarray(a, dtype=float), np.asarray(b, dtype=float)]
    return percentile_ci(data, _mean_difference, resamples, confidence, seed, paired=True)


@dataclass(frozen=True)
class Corr:
    """Spearman ρ with its percentile-bootstrap CI, p-value and (once adjusted) Holm-adjusted p."""

    rho: float
    p: float
    n: int
    low: float = math.nan
    high: float = math.nan
    p_adj: float = math.nan
    confidence: float = DEFAULT_CONFIDENCE  # the CI's coverage; 1 - it is the test's α

    @property
    def significant(self) -> bool:
        """Adjusted p < α when adjusted for multiple testing, else p < α."""
        return (self.p_adj if math.isfinite(self.p_adj) else self.p) < alpha(self.confidence)

    def __str__(self) -> str:
        ci = f" [{self.low:+.2f}, {self.high:+.2f}]" if math.isfinite(self.low) else ""
        test = f"p_adj = {self.p_adj:.2g}" if math.isfinite(self.p_adj) else f"p = {self.p:.2g}"
        return f"ρ = {self.rho:+.2f}{ci} ({test}, n = {self.n})"


def _centred_ranks(values: np.ndarray, blocks: Sequence[slice]) -> np.ndarray:
    """Average ranks along axis -2 within each block, centred and scaled to (-0.5, 0.5) per block.

    Scaling by the block size makes blocks of different sizes comparable, so the Pearson
    correlation of pooled centred ranks is a stratified Spearman ρ (one stratum: plain Spearman).
    """
    from scipy.stats import rankdata

    out = np.empty(values.shape, dtype=np.float64)
    for block in blocks:
        part = values[..., block, :]
        n = part.shape[-2]
        out[..., block, :] = (rankdata(part, axis=-2) - (n + 1) / 2) / n
    return out


def _pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Correlation of every column of ``a`` (…, n, p) with every column of ``b`` (…, n, m): (…, p, m).

    Inputs are centred ranks (mean 0 within every block, so also overall): no further centring.
    """
    num = np.swapaxes(a, -1, -2) @ b
    den = np.sqrt((a * a).sum(-2))[..., :, None] * np.sqrt((b * b).sum(-2))[..., None, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def _p_value(rho: float, n: int, strata: int) -> float:
    """Two-sided p of ρ from the t approximation scipy's ``spearmanr`` uses; one df lost per extra stratum."""
    from scipy.special import stdtr  # the t CDF as a plain ufunc: scipy.stats.t costs ~100 µs a call

    df = n - 1 - strata
    if df < 1 or not math.isfinite(rho):
        return math.nan
    if abs(rho) >= 1.0:
        return 0.0
    stat = rho * math.sqrt(df / (1.0 - rho * rho))
    return float(2 * stdtr(df, -abs(stat)))


def rank_correlations(
    x: dict[str, np.ndarray],
    y: dict[str, np.ndarray],
    pairs: Iterable[tuple[str, str]] | None = None,
    strata: np.ndarray | None = None,
    *,
    confidence: float,
    resamples: int = BOOTSTRAP,
    seed: int = 0,
    min_n: int = 4,
) -> dict[tuple[str, str], Corr | None]:
    """Spearman ρ of ``x[a]`` with ``y[b]`` for each requested pair, over rows where both are finite.

    ``strata`` (one label per row) makes it a stratified ρ: ranks are taken within each stratum, so
    level differences between strata (base models, LoRA vs full) cannot create correlation. CIs (at
    ``confidence``) come from a percentile bootstrap that resamples rows within strata; p from the t approximation, or
    exact (a permutation test over all orders) for at most ``EXACT_MAX_N`` unstratified rows. A
    pair is None when undefined (fewer than ``min_n`` complete rows, or a side constant within
    every stratum).
    """
    names_x, names_y = list(x), list(y)
    wanted = list(pairs) if pairs is not None else [(a, b) for a in names_x for b in names_y]
    labels = np.zeros(len(next(iter(x.values()))) if x else 0, dtype=np.int64) if strata is None else _codes(strata)
    finite_x = {a: np.isfinite(v) for a, v in x.items()}
    finite_y = {b: np.isfinite(v) for b, v in y.items()}
    # Pairs with the same complete rows share one bootstrap: group them by row mask.
    groups: dict[bytes, list[tuple[str, str]]] = {}
    masks: dict[bytes, np.ndarray] = {}
    for a, b in wanted:
        mask = finite_x[a] & finite_y[b]
        key = np.packbits(mask).tobytes()
        groups.setdefault(key, []).append((a, b))
        masks[key] = mask
    out: dict[tuple[str, str], Corr | None] = {}
    rng = np.random.default_rng(seed)
    for key, group in groups.items():
        out.update(_group_correlations(x, y, group, masks[key], labels, resamples, rng, min_n, confidence))
    return {pair: out[pair] for pair in wanted}


def _codes(labels: np.ndarray) -> np.ndarray:
    _, codes = np.unique(np.asarray(labels, dtype=str), return_inverse=True)
    return codes.astype(np.int64)


def _group_correlations(
    x: dict[str, np.ndarray],
    y: dict[str, np.ndarray],
    group: list[tuple[str, str]],
    mask: np.ndarray,
    labels: np.ndarray,
    resamples: int,
    rng: np.random.Generator,
    min_n: int,
    confidence: float,
) -> dict[tuple[str, str], Corr | None]:
    n = int(mask.sum())
    if n < min_n:
        return {pair: None for pair in group}
    cols_x = sorted({a for a, _ in group})
    cols_y = sorted({b for _, b in group})
    order = np.argsort(labels[mask], kind="stable")
    lab = labels[mask][order]
    xs = np.stack([x[a][mask][order] for a in cols_x], axis=1)
    ys = np.stack([y[b][mask][order] for b in cols_y], axis=1)
    bounds = np.flatnonzero(np.diff(lab)) + 1
    starts, ends = np.r_[0, bounds], np.r_[bounds, n]
    blocks = [
        slice(int(s), int(e)) for s, e in zip(starts, ends, strict=True) if e - s >= 2
    ]  # singletons carry no rank information
    kept = np.concatenate([np.arange(b.start, b.stop) for b in blocks]) if blocks else np.zeros(0, dtype=np.int64)
    if len(kept) < min_n:
        return {pair: None for pair in group}
    xs, ys = xs[kept], ys[kept]
    sizes = [b.stop - b.start for b in blocks]
    blocks = [slice(int(s), int(s + k)) for s, k in zip(np.r_[0, np.cumsum(sizes)[:-1]], sizes, strict=True)]
    rank_x, rank_y = _centred_ranks(xs, blocks), _centred_ranks(ys, blocks)
    rho = _pearson(rank_x, rank_y)
    exact = _exact_p(rank_x, rank_y, rho) if len(blocks) == 1 and len(kept) <= EXACT_MAX_N else None
    boot = _bootstrap(xs, ys, blocks, resamples, rng)
    tail = alpha(confidence) / 2
    low, high = _quantiles(boot, tail), _quantiles(boot, 1 - tail)
    ix, iy = {a: i for i, a in enumerate(cols_x)}, {b: j for j, b in enumerate(cols_y)}
    out: dict[tuple[str, str], Corr | None] = {}
    for a, b in group:
        r = float(rho[ix[a], iy[b]])
        if not math.isfinite(r):
            out[a, b] = None
            continue
        lo, hi = float(low[ix[a], iy[b]]), float(high[ix[a], iy[b]])
        p = float(exact[ix[a], iy[b]]) if exact is not None else _p_value(r, len(kept), len(blocks))
        out[a, b] = Corr(r, p, len(kept), lo, hi, confidence=confidence)
    return out


@contextmanager
def quiet() -> Iterator[None]:
    """Silence numpy's all-NaN-slice warnings (e.g. a resample where one side is constant)."""
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def _quantiles(samples: np.ndarray, q: float) -> np.ndarray:
    """``np.nanquantile(samples, q, axis=0)`` (linear), vectorised: NaN resamples (a constant side) are left out."""
    ordered = np.sort(samples, axis=0)  # NaN sorts last
    valid = np.isfinite(samples).sum(axis=0)
    pos = q * np.maximum(valid - 1, 0)
    lower = np.floor(pos).astype(np.intp)
    upper = np.minimum(lower + 1, np.maximum(valid - 1, 0))
    a = np.take_along_axis(ordered, lower[None], axis=0)[0]
    b = np.take_along_axis(ordered, upper[None], axis=0)[0]
    return np.where(valid > 0, a + (pos - lower) * (b - a), np.nan)


@lru_cache(maxsize=4)
def _orders(n: int) -> np.ndarray:
    return np.array(list(itertools.permutations(range(n))), dtype=np.intp)


def _exact_p(rank_x: np.ndarray, rank_y: np.ndarray, rho: np.ndarray) -> np.ndarray:
    """Two-sided permutation p of every ρ over all n! orders of the y ranks (small n, one stratum)."""
    n = rank_x.shape[0]
    orders = _orders(n)
    norm_x = np.sqrt((rank_x**2).sum(axis=0))
    out = np.empty(rho.shape)
    for j in range(rank_y.shape[1]):
        norm = norm_x * np.sqrt((rank_y[:, j] ** 2).sum())  # a permutation keeps both norms
        with quiet():
            permuted = (rank_y[orders, j] @ rank_x) / np.where(norm > 0, norm, np.nan)  # (n!, p)
            out[:, j] = (np.abs(permuted) >= np.abs(rho[:, j]) - 1e-12).mean(axis=0)
    return out


def _bootstrap(
    xs: np.ndarray, ys: np.ndarray, blocks: list[slice], resamples: int, rng: np.random.Generator
) -> np.ndarray:
    """ρ of every (x, y) column pair on each resample (rows drawn with replacement within blocks).

    A resample is held as row counts w, not copied rows, and re-ranked without sorting: a row's
    average rank in the resample is the count of drawn rows with smaller values plus half its tie
    group's count (+½), read off cumulative counts in the full sample's sort order. ρ is then the
    w-weighted correlation of those ranks: the same number as re-ranking the copied rows, in O(n)
    per column instead of a sort.
    """
    n, width = xs.shape[0], xs.shape[1] + ys.shape[1]
    values = np.concatenate([xs, ys], axis=1)
    plans = [[_tie_plan(values[b, c]) for c in range(width)] for b in blocks]
    chunk = max(1, min(resamples, _CHUNK_CELLS // max(1, n * width)))
    results = []
    for start in range(0, resamples, chunk):
        size = min(chunk, resamples - start)
        counts = np.empty((size, n))
        ranks = np.empty((size, n, width))
        for block, plan in zip(blocks, plans, strict=True):
            m = block.stop - block.start
            draws = rng.integers(0, m, (size, m)) + m * np.arange(size)[:, None]
            w = np.bincount(draws.ravel(), minlength=size * m).reshape(size, m).astype(float)
            counts[:, block] = w
            for c, (order, starts, group) in enumerate(plan):
                per_group = np.add.reduceat(w[:, order], starts, axis=1)
                rank = np.cumsum(per_group, axis=1) - per_group + (per_group + 1) / 2
                ranks[:, block, c] = (rank[:, group] - (m + 1) / 2) / m
        weighted = ranks * counts[:, :, None]
        rx, ry, wx = ranks[..., : xs.shape[1]], ranks[..., xs.shape[1] :], weighted[..., : xs.shape[1]]
        num = np.swapaxes(wx, 1, 2) @ ry
        den = np.sqrt((wx * rx).sum(1))[:, :, None] * np.sqrt((weighted[..., xs.shape[1] :] * ry).sum(1))[:, None, :]
        with quiet():
            results.append(np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan))
    return np.concatenate(results, axis=0)


def _tie_plan(column: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sort order, start of each tie group in it, and each row's tie group (for ``_bootstrap``)."""
    order = np.argsort(column, kind="stable")
    ordered = column[order]
    new = np.r_[True, ordered[1:] != ordered[:-1]]
    group = np.empty(len(column), dtype=np.intp)
    group[order] = np.cumsum(new) - 1
    return order, np.flatnonzero(new), group


def adjust(corrs: dict[tuple[str, str], Corr | None]) -> dict[tuple[str, str], Corr | None]:
    """The same correlations with Holm-adjusted p-values over all defined ones (one family).

    Family-wise control, not a false discovery rate: a table of predictors is read as "which of
    these matter", and with a few real effects among hundreds of tests an FDR procedure lets a
    noise measure through every few studies.
    """
    defined = [(k, c) for k, c in corrs.items() if c is not None and math.isfinite(c.p)]
    adjusted_p = holm([c.p for _, c in defined])
    adjusted = {k: replace(c, p_adj=q) for (k, c), q in zip(defined, adjusted_p, strict=True)}
    return {k: adjusted.get(k, c) for k, c in corrs.items()}


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values (family-wise error), in input order.

    Step-down (Holm 1979): the i-th smallest of m p-values is multiplied by m - i (i from 0), and an
    adjusted p is never below the one before it in that order. scipy has no Holm.
    """
    m = len(pvalues)
    adjusted = [0.0] * m
    running = 0.0
    for i, index in enumerate(sorted(range(m), key=lambda j: pvalues[j])):
        running = max(running, min(1.0, (m - i) * pvalues[index]))
        adjusted[index] = running
    return adjusted


def bh(pvalues: Sequence[float]) -> list[float]:
    """Benjamini–Hochberg adjusted p-values (false discovery rate), in input order."""
    if not len(pvalues):
        return []
    from scipy.stats import false_discovery_control

    return [float(q) for q in false_discovery_control(np.asarray(pvalues, dtype=float), method="bh")]


@dataclass(frozen=True)
class MeanCI:
    mean: float
    low: float
    high: float
    n: int

    @property
    def sign(self) -> int:
        """+1 or -1 when the CI excludes 0, else 0."""
        return 1 if self.low > 0 else -1 if self.high < 0 else 0

    def __str__(self) -> str:
        if not math.isfinite(self.low):
            return f"{self.mean:+.3g} (n = {self.n})"
        return f"{self.mean:+.3g} [{self.low:+.3g}, {self.high:+.3g}]"


def _present(values: Iterable[float | None]) -> np.ndarray:
    return np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)


def mean_ci(values: Iterable[float | None], confidence: float) -> MeanCI | None:
    """Mean with its two-sided t interval at ``confidence`` (``ttest_1samp``); no interval below two values.

    All-equal values have a zero-width interval at their mean.
    """
    present = _present(values)
    if not len(present):
        return None
    centre = float(present.mean())
    if len(present) < 2:
        return MeanCI(centre, math.nan, math.nan, 1)
    if np.ptp(present) == 0:
        return MeanCI(centre, centre, centre, len(present))
    from scipy.stats import ttest_1samp

    ci = ttest_1samp(present, 0.0).confidence_interval(confidence)
    return MeanCI(centre, float(ci.low), float(ci.high), len(present))


def t_test_p(values: Sequence[float]) -> float:
    """Two-sided one-sample t test of mean = 0 (NaN below two values; 0 when all equal and non-zero)."""
    data = np.asarray(values, dtype=float)
    if len(data) < 2:
        return math.nan
    if np.ptp(data) == 0:
        return 1.0 if data[0] == 0 else 0.0
    from scipy.stats import ttest_1samp

    return float(ttest_1samp(data, 0.0).pvalue)


def strongest(corrs: dict[str, Corr | None]) -> tuple[str, Corr] | None:
    """The entry with the largest |ρ|, if any is defined."""
    defined = [(name, c) for name, c in corrs.items() if c is not None]
    return max(defined, key=lambda item: abs(item[1].rho)) if defined else None


def mean(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.fmean(present) if present else None
