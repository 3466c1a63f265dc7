"""The pieces every report is made of: cell formats, Markdown and HTML tables, plots, the page, the files.

The HTML page is self-contained (styles inline, plots embedded as data URIs) and every value shown is
HTML-escaped: datasets hold user text and LM output.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from geode.evals.eval_results import EvalResult, ExampleResult

__all__ = ["ReportFiles", "fmt_cost"]


@dataclass(frozen=True)
class ReportFiles:
    """Where a report was written."""

    directory: Path
    html: Path
    markdown: Path
    json: Path
    png: Path | None


# -- formatting -----------------------------------------------------------------------------------


def fmt_cost(value: float | None) -> str:
    """Dollars for a table cell: ``$0`` when free, ``n/a`` when unknown."""
    if value is None:
        return "n/a"
    if value == 0:
        return "$0"
    return f"${value:.4f}" if value >= 0.0001 else f"${value:.2e}"


def _fmt_spd(value: float | None) -> str:
    if value is None:
        return "n/a"
    if math.isinf(value):
        return "free"
    return f"{value:,.0f}"


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:,.0f} ms"


def _markdown(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _eval_row(label: str, r: EvalResult) -> list[str]:
    return [
        label,
        r.version or "base",
        _pct(r.score),
        f"{r.n - r.errors}/{r.n}",
        _ms(r.latency_p50_s),
        _ms(r.latency_p95_s),
        f"{r.total_tokens / r.n:,.0f}" if r.n else "0",
        fmt_cost(r.cost_usd),
    ]


_EVAL_HEADERS = ("program", "version", "score", "ran ok", "p50", "p95", "tokens/example", "cost")


def _figure() -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    # Figure() with no pyplot: no global backend state, safe in servers and threads.
    return Figure(figsize=(9, 3.6), dpi=110)


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    return buf.getvalue()


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem;color:#222;max-width:1100px}
h1{font-size:1.4rem}h2{font-size:1.1rem;margin-top:2rem}
table{border-collapse:collapse;margin:.5rem 0;font-size:.9rem}
th,td{border:1px solid #ddd;padding:.3rem .6rem;text-align:left;vertical-align:top}
th{background:#f4f4f4}td.num{text-align:right}
tr.better td{background:#eefaf0}tr.worse td{background:#fdeeee}
.verdict{padding:.6rem 1rem;border-radius:4px;display:inline-block}
.pass{background:#e3f6e8}.fail{background:#fbe4e4}
code,pre{font-family:ui-monospace,Menlo,monospace;font-size:.85rem}
pre{white-space:pre-wrap;margin:0}
.muted{color:#777}
"""


def _table_html(headers: Sequence[str], rows: Sequence[Sequence[str]], classes: Sequence[str] = ()) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{classes[i]}"' if i < len(classes) and classes[i] else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _short(value: Any, limit: int = 300) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _example_pairs(
    base: EvalResult, cand: EvalResult
) -> tuple[list[tuple[ExampleResult, ExampleResult]], list[list[str]], list[str]]:
    """The two results example by example (changed scores first): the pairs, table rows and row classes."""
    pairs = sorted(
        zip(base.examples, cand.examples, strict=True), key=lambda p: (p[0].score == p[1].score, p[0].index)
    )
    rows = [
        [
            _short(b.inputs),
            _short(b.expected),
            _short(b.error or b.outputs),
            f"{b.score:.2f}",
            _short(c.error or c.outputs),
            f"{c.score:.2f}",
        ]
        for b, c in pairs
    ]
    classes = ["better" if c.score > b.score else "worse" if c.score < b.score else "" for b, c in pairs]
    return pairs, rows, classes


# The page loads nothing and runs nothing: its plots are inline PNGs, its style inline. Should any text
# ever reach it unescaped, the browser still fetches no URL (no exfiltration by image) and runs no script.
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"


def _page(title: str, body: str) -> str:
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<meta http-equiv='Content-Security-Policy' content=\"{_CSP}\">"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>{body}</body></html>\n"
    )


def _img(png: bytes | None) -> str:
    if png is None:
        return "<p class='muted'>No plot: matplotlib is not installed (pip install 'geode[report]').</p>"
    return f"<img alt='plot' style='max-width:100%' src='data:image/png;base64,{base64.b64encode(png).decode()}'>"


def _write(
    directory: Path, stem: str, page: str, markdown: str, data: dict[str, Any], png: bytes | None
) -> ReportFiles:
    directory.mkdir(parents=True, exist_ok=True)
    html_path = directory / f"{stem}.html"
    md_path = directory / f"{stem}.md"
    json_path = directory / f"{stem}.json"
    png_path = directory / f"{stem}.png" if png is not None else None
    html_path.write_text(page, encoding="utf-8")
    md_path.write_text(markdown, encoding="utf-8")
    json_path.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    if png_path is not None and png is not None:
        png_path.write_bytes(png)
    return ReportFiles(directory=directory, html=html_path, markdown=md_path, json=json_path, png=png_path)
