"""What every section is made of, and the options every analysis reads.

Each section module has an ``analyse`` step (numbers: dataclasses and DataFrames, no matplotlib)
and a ``render`` step that turns its result into a ``Section``: text, display tables, PNG figures
and data tables. Display tables are strings (the HTML and Markdown pages); data tables are
DataFrames with full-precision numbers, written as CSV and Parquet next to the report.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sftlab.stats import BOOTSTRAP, DEFAULT_CONFIDENCE, Corr, MeanCI

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

MAX_PANELS = 12  # figure panels per plot: more become unreadable; the tables keep everything


@dataclass(frozen=True)
class Options:
    resamples: int = BOOTSTRAP  # bootstrap resamples per correlation CI
    seed: int = 0
    experiment: str = ""
    confidence: float = DEFAULT_CONFIDENCE  # every CI's coverage, 1 - every test's α: the spec's evaluation.confidence


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]
    in_markdown: bool = True
    caption: str = ""
    collapsed: bool = False  # long tables start folded in the HTML page
    markdown_limit: int | None = None  # rows kept in the terminal summary (the HTML and data tables keep all)


@dataclass
class Section:
    title: str
    text: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    figures: list[bytes] = field(default_factory=list)  # PNG
    data: dict[str, pd.DataFrame] = field(default_factory=dict)  # written as tables/<name>.csv and .parquet

    @property
    def anchor(self) -> str:
        return "".join(c if c.isalnum() else "-" for c in self.title.lower()).strip("-")


def png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=90)
    return buffer.getvalue()


def subplots(count: int, width: float = 4.2, height: float = 3.4, cols: int = 3) -> tuple[Figure, list[Any]]:
    """A figure with ``count`` panels, ``cols`` per row (no pyplot: safe off the main thread)."""
    from matplotlib.figure import Figure

    cols = min(cols, max(1, count))
    rows = math.ceil(max(1, count) / cols)
    fig = Figure(figsize=(width * cols, height * rows))
    axes = [fig.add_subplot(rows, cols, i + 1) for i in range(max(1, count))]
    return fig, axes


def corr_fields(corr: Corr | None) -> dict[str, float]:
    """A correlation as data-table columns (NaN when undefined)."""
    if corr is None:
        return {"rho": math.nan, "ci_low": math.nan, "ci_high": math.nan, "p": math.nan, "p_adj": math.nan, "n": 0}
    return {"rho": corr.rho, "ci_low": corr.low, "ci_high": corr.high, "p": corr.p, "p_adj": corr.p_adj, "n": corr.n}


def ci_fields(ci: MeanCI | None) -> dict[str, float]:
    if ci is None:
        return {"mean": math.nan, "ci_low": math.nan, "ci_high": math.nan, "n": 0}
    return {"mean": ci.mean, "ci_low": ci.low, "ci_high": ci.high, "n": ci.n}


def fmt(value: float | None, signed: bool = False) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    return f"{value:+.4g}" if signed else f"{value:.4g}"


def short(corr: Corr | None, mark: bool = True) -> str:
    """ρ [CI] with a * when significant; compact enough for a wide table cell."""
    if corr is None:
        return "n/a"
    ci = f" [{corr.low:+.2f}, {corr.high:+.2f}]" if math.isfinite(corr.low) else ""
    return f"{corr.rho:+.2f}{ci}{' *' if mark and corr.significant else ''}"
