"""Rendering sections as self-contained HTML (figures embedded) and Markdown, and the trial table as CSV."""

from __future__ import annotations

import base64
import csv
import html
from pathlib import Path

from sftlab.reporting.sections import Section, Table, build_sections
from sftlab.reporting.trials import TrialRow

REPORT_FILES = ("report.html", "report.md", "trials.csv")

_CSS = (
    "body{font-family:system-ui,sans-serif;margin:2em;max-width:1500px}"
    "table{border-collapse:collapse;margin:.8em 0;font-size:12px}"
    "th,td{border:1px solid #ccc;padding:3px 6px;text-align:right}th{background:#f2f2f2}"
    "td:first-child,th:first-child{text-align:left}img{max-width:100%;display:block;margin:.8em 0}"
)


def _html_table(table: Table) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table.headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in table.rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(title: str, sections: list[Section]) -> str:
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"]
    parts.append(f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>")
    for section in sections:
        parts.append(f"<h2>{html.escape(section.title)}</h2>")
        parts += [f"<p>{html.escape(line)}</p>" for line in section.text]
        parts += [_html_table(t) for t in section.tables if t.rows]
        parts += [
            f"<img alt='{html.escape(section.title)}' src='data:image/png;base64,{base64.b64encode(png).decode()}'>"
            for png in section.figures
        ]
    parts.append("</body></html>")
    return "\n".join(parts)


def _md_table(table: Table) -> str:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(table.headers), line(["---"] * len(table.headers)), *map(line, table.rows)])


def render_markdown(title: str, sections: list[Section]) -> str:
    parts = [f"# {title}"]
    for section in sections:
        parts.append(f"## {section.title}")
        parts += section.text
        parts += [_md_table(t) for t in section.tables if t.in_markdown and t.rows]
    return "\n\n".join(parts) + "\n"


def write_csv(rows: list[TrialRow], path: Path) -> None:
    """Every planned trial with its status, training params and all metrics, one line each."""
    params = sorted({p for r in rows for p in r.params if p.startswith("training.")})
    metrics = sorted({k for r in rows for k in r.metrics})
    fixed = ["label", "key", "status", "note", "run_id", "base_model", "dataset", "method"]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(fixed + params + metrics)
        for r in rows:
            run_id = r.run.info.run_id if r.run else ""
            head = [r.label, r.key, r.status, r.note, run_id, r.tag("base_model"), r.tag("dataset"), r.tag("method")]
            writer.writerow(head + [r.params.get(p, "") for p in params] + [r.metrics.get(m, "") for m in metrics])


def write_report(rows: list[TrialRow], out_dir: Path, title: str) -> Path:
    """report.html, report.md and trials.csv in ``out_dir``; returns the HTML path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    sections = build_sections(rows)
    (out_dir / "report.html").write_text(render_html(title, sections), encoding="utf-8")
    (out_dir / "report.md").write_text(render_markdown(title, sections), encoding="utf-8")
    write_csv(rows, out_dir / "trials.csv")
    return out_dir / "report.html"
