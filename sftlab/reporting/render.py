"""Rendering a report as one self-contained HTML page (figures embedded), a Markdown summary, and data tables.

Data tables go to ``tables/<name>.csv`` and ``.parquet``; every trial with every metric to
``trials.csv`` / ``trials.parquet``.
"""

from __future__ import annotations

import base64
import csv
import html
import logging
import math
import shutil
from pathlib import Path

from sftlab.reporting.content import Section, Table
from sftlab.reporting.sections import Options, Report, build_sections
from sftlab.reporting.trials import TrialRow

log = logging.getLogger(__name__)
PAGES = ("report.html", "report.md", "trials.csv", "trials.parquet")
EXTRA_FILES = ("predictor.json",)
TABLES = "tables"
DEFAULT_OPTIONS = Options()  # frozen, so one shared default is safe

_CSS = (
    "body{font-family:system-ui,sans-serif;margin:2em;max-width:1500px;color:#222}"
    "table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:12px}"
    "th,td{border:1px solid #ccc;padding:3px 6px;text-align:right;white-space:nowrap}th{background:#f2f2f2}"
    "td:first-child,th:first-child{text-align:left}caption{text-align:left;font-weight:600;padding:.3em 0}"
    "img{max-width:100%;display:block;margin:.8em 0}details{margin:.4em 0}summary{cursor:pointer;color:#345}"
    "nav ol{columns:2;font-size:14px}.scroll{overflow-x:auto}p{max-width:75em;line-height:1.4}"
)


def _html_table(table: Table) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table.headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in table.rows)
    caption = f"<caption>{html.escape(table.caption)}</caption>" if table.caption else ""
    out = f"<div class='scroll'><table>{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"
    if table.collapsed:
        label = html.escape(table.caption or "table")
        return f"<details><summary>{label} ({len(table.rows)} rows)</summary>{out}</details>"
    return out


def render_html(title: str, sections: list[Section]) -> str:
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"]
    parts.append(f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>")
    parts.append(
        "<nav><ol>"
        + "".join(f"<li><a href='#{s.anchor}'>{html.escape(s.title)}</a></li>" for s in sections)
        + "</ol></nav>"
    )
    for section in sections:
        parts.append(f"<h2 id='{section.anchor}'>{html.escape(section.title)}</h2>")
        parts += [f"<p>{html.escape(line)}</p>" for line in section.text]
        parts += [_html_table(t) for t in section.tables if t.rows]
        parts += [
            f"<img alt='{html.escape(section.title)} figure {i + 1}' "
            f"src='data:image/png;base64,{base64.b64encode(png).decode()}'>"
            for i, png in enumerate(section.figures)
        ]
        if section.data:
            names = ", ".join(f"{TABLES}/{name}.csv" for name in section.data)
            parts.append(f"<p><small>Data: {html.escape(names)} (and .parquet).</small></p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _md_table(table: Table) -> str:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    rows = table.rows[: table.markdown_limit] if table.markdown_limit else table.rows
    out = [line(table.headers), line(["---"] * len(table.headers)), *map(line, rows)]
    if len(rows) < len(table.rows):
        out.append(f"\n({len(table.rows) - len(rows)} more rows in the HTML report)")
    return "\n".join(out)


def render_markdown(title: str, sections: list[Section]) -> str:
    parts = [f"# {title}"]
    for section in sections:
        parts.append(f"## {section.title}")
        parts += section.text
        parts += [_md_table(t) for t in section.tables if t.in_markdown and t.rows]
    return "\n\n".join(parts) + "\n"


def _trial_columns(rows: list[TrialRow]) -> tuple[list[str], list[str]]:
    params = sorted({p for r in rows for p in r.params if p.startswith("training.")})
    metrics = sorted({k for r in rows for k in r.metrics})
    return params, metrics


FIXED = ["label", "key", "status", "note", "run_id", "base_model", "dataset", "method"]


def _fixed(r: TrialRow) -> list[str]:
    return [r.label, r.key, r.status, r.note, r.run_id, r.tag("base_model"), r.tag("dataset"), r.tag("method")]


def write_csv(rows: list[TrialRow], path: Path) -> None:
    """Every planned trial with its status, training params and all metrics, one line each."""
    params, metrics = _trial_columns(rows)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(FIXED + params + metrics)
        for r in rows:
            writer.writerow(_fixed(r) + [r.params.get(p, "") for p in params] + [r.metrics.get(m, "") for m in metrics])


def write_parquet(rows: list[TrialRow], path: Path) -> None:
    """The same table as trials.csv, metrics as float columns (NaN where not logged)."""
    import pandas as pd

    params, metrics = _trial_columns(rows)
    columns: dict[str, list] = {name: [] for name in FIXED + params + metrics}
    for r in rows:
        for name, value in zip(FIXED, _fixed(r), strict=True):
            columns[name].append(value)
        for p in params:
            columns[p].append(r.params.get(p, ""))
        for m in metrics:
            columns[m].append(r.metrics.get(m, math.nan))
    pd.DataFrame(columns).to_parquet(path, index=False)


def write_report(rows: list[TrialRow], out_dir: Path, title: str, options: Options = DEFAULT_OPTIONS) -> Path:
    """report.html, report.md, trials.csv/.parquet, tables/*.csv/.parquet and extra files in ``out_dir``.

    Returns the HTML path.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    report: Report = build_sections(rows, options)
    log.info("report sections: %s", ", ".join(f"{k} {v:.1f} s" for k, v in report.seconds.items()))
    shutil.rmtree(out_dir / TABLES, ignore_errors=True)  # no stale tables from an earlier build
    (out_dir / TABLES).mkdir()
    for section in report.sections:
        for name, frame in section.data.items():
            frame.to_csv(out_dir / TABLES / f"{name}.csv", index=False)
            frame.to_parquet(out_dir / TABLES / f"{name}.parquet", index=False)
    for name in EXTRA_FILES:
        (out_dir / name).unlink(missing_ok=True)  # a predictor of an earlier build must not outlive it
    for name, text in report.files.items():
        (out_dir / name).write_text(text, encoding="utf-8")
    (out_dir / "report.html").write_text(render_html(title, report.sections), encoding="utf-8")
    (out_dir / "report.md").write_text(render_markdown(title, report.sections), encoding="utf-8")
    write_csv(rows, out_dir / "trials.csv")
    write_parquet(rows, out_dir / "trials.parquet")
    return out_dir / "report.html"


def report_files(out_dir: Path) -> list[Path]:
    """Everything a build wrote, relative to ``out_dir`` (other files there are not the report's)."""
    found = [Path(name) for name in (*PAGES, *EXTRA_FILES) if (out_dir / name).is_file()]
    return found + sorted(p.relative_to(out_dir) for p in (out_dir / TABLES).glob("*") if p.is_file())
