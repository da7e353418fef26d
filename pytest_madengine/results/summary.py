"""The results table as Markdown (``--mad-summary``, ``$GITHUB_STEP_SUMMARY``), as HTML for
pytest-html, and a hand-written SVG chart of performance against the baseline."""

from __future__ import annotations

import html
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pytest_madengine.results import report
from pytest_madengine.results.baseline import delta_cell, row_property
from pytest_madengine.results.result import FAILURE, ModelResult, fmt_value

HEADER = ("model", "status", "performance", "metric", "delta")


def _md_cell(text: str) -> str:
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def markdown(results: Sequence[ModelResult], chart: str | None = None, title: str = "madengine results") -> str:
    rows = report.summary_rows(results)
    lines = [f"## {title}", "", "| " + " | ".join(HEADER) + " |", "|---|---|---:|---|---:|"]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    counts: dict[str, int] = {}
    for r in results:
        counts[r.status] = counts.get(r.status, 0) + 1
    lines += ["", ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))]
    if chart:
        lines += ["", f"![performance vs baseline]({chart})"]
    return "\n".join(lines) + "\n"


def html_table(results: Sequence[ModelResult]) -> str:
    rows = report.summary_rows(results)
    head = "".join(f"<th>{html.escape(h)}</th>" for h in HEADER)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f'<h2>madengine results</h2><table class="mad-results"><tr>{head}</tr>{body}</table>'


@dataclass(frozen=True)
class Bar:
    name: str
    metric: str
    current: float
    baseline: float | None
    delta: str  # the summary cell, e.g. "-12.3%"
    regressed: bool


def bars(results: Iterable[ModelResult]) -> list[Bar]:
    out = []
    for r in results:
        for row in r.rows:
            if row.performance is None:
                continue
            base_text = row_property(r, "baseline", row.name)
            try:
                base = float(base_text) if base_text else None
            except ValueError:
                base = None  # "none": no baseline entry
            out.append(Bar(row.name, row.metric, row.performance, base, delta_cell(r, row.name),
                           row.status == FAILURE))
    return out


def svg_chart(items: Sequence[Bar], title: str = "performance vs baseline") -> str:
    """Horizontal bars, one group per result row: current (blue, red when it regressed) and
    baseline (grey). Each group is scaled to its own larger value, since metrics differ."""
    label_w, bar_w, text_w, group_h, top = 280, 320, 150, 38, 44
    width = label_w + bar_w + text_w
    height = top + group_h * max(len(items), 1) + 16
    esc = html.escape
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
        f"<title>{esc(title)}</title>",
        '<rect width="100%" height="100%" fill="white"/>',
        f'<text x="8" y="18" font-size="14" font-weight="bold">{esc(title)}</text>',
        '<rect x="8" y="26" width="10" height="10" fill="#1f77b4"/><text x="22" y="35">current</text>',
        '<rect x="80" y="26" width="10" height="10" fill="#999999"/><text x="94" y="35">baseline</text>',
        '<rect x="160" y="26" width="10" height="10" fill="#d62728"/><text x="174" y="35">regressed</text>',
    ]
    if not items:
        parts.append(f'<text x="8" y="{top + 14}">no results with a performance value</text>')
    for i, b in enumerate(items):
        y = top + i * group_h
        scale = max(abs(b.current), abs(b.baseline or 0.0)) or 1.0
        cur_len = bar_w * abs(b.current) / scale
        parts.append(f'<text x="{label_w - 8}" y="{y + 13}" text-anchor="end">{esc(b.name[:40])}</text>')
        parts.append(f'<text x="{label_w - 8}" y="{y + 27}" text-anchor="end" fill="#666666">{esc(b.metric[:40])}</text>')
        color = "#d62728" if b.regressed else "#1f77b4"
        parts.append(f'<rect x="{label_w}" y="{y + 3}" width="{cur_len:.1f}" height="13" fill="{color}">'
                     f"<title>current {fmt_value(b.current)} {esc(b.metric)}</title></rect>")
        parts.append(f'<text x="{label_w + cur_len + 4:.1f}" y="{y + 14}">{esc(fmt_value(b.current))}</text>')
        if b.baseline is not None:
            base_len = bar_w * abs(b.baseline) / scale
            parts.append(f'<rect x="{label_w}" y="{y + 18}" width="{base_len:.1f}" height="13" fill="#999999">'
                         f"<title>baseline {fmt_value(b.baseline)} {esc(b.metric)}</title></rect>")
            parts.append(f'<text x="{label_w + base_len + 4:.1f}" y="{y + 29}" fill="#666666">'
                         f"{esc(fmt_value(b.baseline))}</text>")
        delta = b.delta or "no baseline"
        parts.append(f'<text x="{width - 8}" y="{y + 21}" text-anchor="end" '
                     f'fill="{"#d62728" if b.regressed else "#333333"}">{esc(delta)}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


class SummaryWriter:
    """Controller-side: after the run, writes ``--mad-summary`` (Markdown) with its chart
    beside it (same name, ``.svg``) and appends the table to ``$GITHUB_STEP_SUMMARY``."""

    def __init__(self, config: pytest.Config, path: Path | None) -> None:
        self.config = config
        self.path = path
        self.written: list[Path] = []

    def results(self) -> list[ModelResult]:
        reporter = self.config.pluginmanager.get_plugin("madengine-reporter")
        return list(getattr(reporter, "results", []) or [])

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        results = self.results()
        if not results:
            return
        if self.path is not None:
            chart = self.path.with_suffix(".svg")
            self.path.parent.mkdir(parents=True, exist_ok=True)
            chart.write_text(svg_chart(bars(results)), encoding="utf-8")
            self.path.write_text(markdown(results, chart=chart.name), encoding="utf-8")
            self.written += [self.path, chart]
        step = os.environ.get("GITHUB_STEP_SUMMARY")
        if step:
            with open(step, "a", encoding="utf-8") as fh:
                fh.write(markdown(results) + "\n")
            self.written.append(Path(step))

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.written:
            terminalreporter.write_line("madengine summary: " + ", ".join(map(str, self.written)))


class HtmlSummary:
    """pytest-html (when installed and --html is given): the same table in its report."""

    def __init__(self, writer: SummaryWriter) -> None:
        self.writer = writer

    @pytest.hookimpl(optionalhook=True)
    def pytest_html_results_summary(self, prefix: list[Any], summary: list[Any], postfix: list[Any],
                                    session: Any) -> None:
        results = self.writer.results()
        if results:
            postfix.append(html_table(results))
            postfix.append(svg_chart(bars(results)))
