"""The profile card: one self-contained HTML page (plots embedded as PNG data URIs) per profile run.

HTML rather than Markdown because MLflow's artifact viewer renders HTML, and embedding the
images keeps the card one file that survives being downloaded or copied between stores.
"""

from __future__ import annotations

import base64
import html
import io
from typing import Any

import numpy as np

_STYLE = (
    "<style>body{font-family:sans-serif;max-width:60em;margin:1em auto}td{padding:0 1em}"
    "table{border-collapse:collapse}tr:nth-child(odd){background:#f4f4f4}</style></head><body>"
)


def histogram_png(series: dict[str, np.ndarray], bins: int, xlabel: str, log_x: bool = False) -> str:
    """Overlaid histograms of named series as a base64 PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=90)
    for name, values in series.items():
        if len(values):
            data = np.log10(np.maximum(values, 1e-9)) if log_x else values
            ax.hist(data, bins=bins, alpha=0.6, label=f"{name} (n={len(values)})")
    ax.set_xlabel(f"log10 {xlabel}" if log_x else xlabel)
    ax.set_ylabel("rows")
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _table(rows: list[tuple[str, Any]]) -> str:
    cells = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(_fmt(v))}</td></tr>" for k, v in rows)
    return f"<table>{cells}</table>"


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def render(title: str, metrics: dict[str, float], images: dict[str, str], detail: dict[str, Any]) -> str:
    """The card's HTML: metrics, plots, contaminated items, bad rows and notes."""
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        _STYLE,
        f"<h1>{html.escape(title)}</h1>",
        "<h2>Measures</h2>",
        _table(sorted(metrics.items())),
    ]
    for caption, png in images.items():
        parts.append(
            f"<h2>{html.escape(caption)}</h2><img alt='{html.escape(caption)}' src='data:image/png;base64,{png}'>"
        )
    for bench, info in detail.get("benchmarks", {}).items():
        listed = info.get("contaminated", [])
        parts.append(f"<h2>Contamination: {html.escape(bench)} ({len(listed)} items)</h2>")
        parts.append(_table([(f"item {c['item']} / train row {c['train_row']}", c["ngram"]) for c in listed[:50]]))
    bad = detail.get("bad_rows", [])
    parts.append(f"<h2>Bad rows ({detail.get('bad_rows_total', len(bad))})</h2>")
    parts.append(_table([(f"row {b['row']}", b["reason"]) for b in bad[:50]]))
    if detail.get("notes"):
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in detail["notes"]) + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts)
