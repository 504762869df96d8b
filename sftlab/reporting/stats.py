"""Rank correlations and the number formats the report uses."""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass

NA = "n/a (too few trials)"


@dataclass(frozen=True)
class Corr:
    rho: float
    p: float
    n: int

    def __str__(self) -> str:
        return f"ρ = {self.rho:+.2f} (p = {self.p:.2g}, n = {self.n})"


def spearman(pairs: Iterable[tuple[float | None, float | None]]) -> Corr | None:
    """Spearman ρ over complete pairs; None when undefined (fewer than 3 points or a constant side)."""
    complete = [(x, y) for x, y in pairs if x is not None and y is not None]
    xs, ys = [x for x, _ in complete], [y for _, y in complete]
    if len(complete) < 3 or len(set(xs)) < 2 or len(set(ys)) < 2:
        return None
    from scipy.stats import spearmanr

    result = spearmanr(xs, ys)
    return Corr(float(result.statistic), float(result.pvalue), len(complete))


def strongest(corrs: dict[str, Corr | None]) -> tuple[str, Corr] | None:
    """The entry with the largest |ρ|, if any is defined."""
    defined = [(name, c) for name, c in corrs.items() if c is not None]
    return max(defined, key=lambda item: abs(item[1].rho)) if defined else None


def mean(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.fmean(present) if present else None


def fmt(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "–"
    return f"{value:+.4g}" if signed else f"{value:.4g}"


def cell(corr: Corr | None) -> str:
    return str(corr) if corr else NA

