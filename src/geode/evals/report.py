"""Reports for recompilation and model comparison: a table (Markdown), a plot (PNG) and one HTML file.

The HTML report is self-contained (styles inline, the plot embedded as a data URI) so it can be
attached to a ticket or opened from disk. Every value shown is HTML-escaped: datasets hold user text
and LM output. The plot needs matplotlib (the ``report`` extra); without it the report is written
without a plot and says so.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from geode.evals.compile import CompileResult
from geode.evals.evaluate import EvalResult, ExampleResult

__all__ = [
    "ModelRow",
    "ProgramComparison",
    "ReportFiles",
    "comparison_markdown",
    "comparison_table",
    "compile_table",
    "fmt_cost",
    "models_table",
    "write_comparison_report",
    "write_compile_report",
    "write_models_report",
]


@dataclass(frozen=True)
class ModelRow:
    """One model's line in a model comparison: its evaluation, and the compiled variant's if any."""

    model: str
    baseline: EvalResult
    candidate: EvalResult | None = None
    """The program compiled on this model, scored on the same held-out split."""
    optimizer: str | None = None
    compile_seconds: float | None = None

    @property
    def best(self) -> EvalResult:
        """The variant to compare models by: the compiled one when it exists."""
        return self.candidate if self.candidate is not None else self.baseline


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


def compile_table(result: CompileResult) -> tuple[tuple[str, ...], list[list[str]]]:
    """Headers and rows comparing baseline and candidate on the held-out split."""
    return _EVAL_HEADERS, [_eval_row("baseline", result.baseline), _eval_row("candidate", result.candidate)]


_MODEL_HEADERS = (
    "model",
    "program",
    "score",
    "cost",
    "cost/example",
    "p50",
    "p95",
    "tokens/example",
    "score per $",
)


def models_table(rows: Sequence[ModelRow]) -> tuple[tuple[str, ...], list[list[str]]]:
    """Headers and rows: score, cost, latency and score per dollar per model (and compiled variant)."""
    out: list[list[str]] = []
    for row in rows:
        variants = [("base", row.baseline)]
        if row.candidate is not None:
            variants.append((f"+{row.optimizer or 'compiled'}", row.candidate))
        for label, r in variants:
            out.append(
                [
                    row.model,
                    label,
                    _pct(r.score),
                    fmt_cost(r.cost_usd),
                    fmt_cost(r.cost_per_example),
                    _ms(r.latency_p50_s),
                    _ms(r.latency_p95_s),
                    f"{r.total_tokens / r.n:,.0f}" if r.n else "0",
                    _fmt_spd(r.score_per_dollar),
                ]
            )
    return _MODEL_HEADERS, out


# -- plots ----------------------------------------------------------------------------------------


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


def _compile_plot(result: CompileResult) -> bytes | None:
    fig = _figure()
    if fig is None:
        return None
    labels = ["baseline", "candidate"]
    runs = [result.baseline, result.candidate]
    colors = ["#8c8c8c", "#2b7bba" if result.delta >= 0 else "#c0392b"]
    ax1, ax2, ax3 = fig.subplots(1, 3)
    bars = ax1.bar(labels, [100 * r.score for r in runs], color=colors)
    ax1.bar_label(bars, labels=[_pct(r.score) for r in runs])
    ax1.set_ylim(0, 105)
    ax1.set_title(f"held-out {result.metric} (n={result.baseline.n})")
    ax1.set_ylabel("score %")
    ax2.bar(labels, [1000 * r.latency_p50_s for r in runs], color=colors, label="p50")
    ax2.scatter(labels, [1000 * r.latency_p95_s for r in runs], color="black", marker="_", s=400, label="p95")
    ax2.set_title("latency per example (ms)")
    ax2.legend(loc="lower right", fontsize=8)
    ax3.bar(labels, [r.total_tokens / max(1, r.n) for r in runs], color=colors)
    ax3.set_title("tokens per example")
    fig.suptitle(f"{result.program}: {result.optimizer.name} ({result.delta * 100:+.1f} points)", fontsize=11)
    return _png(fig)


def _models_plot(rows: Sequence[ModelRow]) -> bytes | None:
    fig = _figure()
    if fig is None:
        return None
    ax1, ax2 = fig.subplots(1, 2)
    names: list[str] = []
    scores: list[float] = []
    for row in rows:
        names.append(row.model)
        scores.append(100 * row.baseline.score)
        if row.candidate is not None:
            names.append(f"{row.model}\n+{row.optimizer}")
            scores.append(100 * row.candidate.score)
    bars = ax1.bar(range(len(names)), scores, color="#2b7bba")
    ax1.set_xticks(range(len(names)), names, fontsize=7)
    ax1.bar_label(bars, labels=[f"{s:.1f}%" for s in scores], fontsize=7)
    ax1.set_ylim(0, 105)
    ax1.set_title("score")
    costed = [(row.model, row.best) for row in rows if row.best.cost_usd is not None]
    if costed:
        for name, r in costed:
            ax2.scatter([r.cost_per_example or 0.0], [100 * r.score], s=60)
            ax2.annotate(
                name,
                (r.cost_per_example or 0.0, 100 * r.score),
                fontsize=7,
                xytext=(4, 4),
                textcoords="offset points",
            )
        ax2.set_xlabel("$ per example")
        ax2.set_ylabel("score %")
        ax2.set_title("score vs cost")
    else:
        ax2.text(0.5, 0.5, "no prices known", ha="center", va="center")
        ax2.set_axis_off()
    return _png(fig)


# -- HTML -----------------------------------------------------------------------------------------

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


def write_compile_report(
    result: CompileResult,
    directory: str | Path,
    *,
    margin: float = 0.05,
    baseline_version: str | None = None,
    candidate_version: str | None = None,
    active_version: str | None = None,
) -> ReportFiles:
    """Write ``compile.{html,md,json,png}`` for a recompilation into ``directory``.

    Args:
        result: The recompilation.
        directory: Where to write (created if missing).
        margin: The promotion gate, to state the verdict.
        baseline_version: The baseline's registry version.
        candidate_version: The candidate's registry version.
        active_version: The version serving when the report was written.
    """
    out = Path(directory)
    headers, rows = compile_table(result)
    passes = result.passes_gate(margin)
    verdict = (
        f"The candidate beats the baseline by {result.delta * 100:+.1f} points on {result.baseline.n} held-out "
        f"examples; the promotion gate needs {margin * 100:+.1f}: "
        + ("it would be promoted." if passes else "it would NOT be promoted.")
    )
    settings = result.optimizer.to_dict()
    facts = [
        ["program", result.program],
        ["dataset", f"{result.dataset_name or ''} {result.dataset_id}".strip()],
        [
            "split",
            f"{len(result.train_ids)} train / {len(result.heldout_ids)} held out "
            f"(fraction {result.heldout_fraction}, seed {result.split_seed})",
        ],
        ["metric", result.metric],
        ["model", result.candidate.model or "?"],
        ["optimizer", ", ".join(f"{k}={v}" for k, v in settings.items() if v not in (None, ""))],
        [
            "compile time",
            f"{result.compile_seconds:.1f} s, {result.compile_lm_calls} LM calls, "
            f"{result.compile_prompt_tokens + result.compile_completion_tokens:,} tokens",
        ],
        ["candidate demos", str(result.candidate_demos)],
        [
            "versions",
            f"baseline {baseline_version or 'base'} -> candidate {candidate_version or '?'}"
            + (f" (active: {active_version})" if active_version else ""),
        ],
    ]
    png = _compile_plot(result)

    # Per-example comparison, changed examples first.
    pairs, ex_rows, classes = _example_pairs(result.baseline, result.candidate)
    improved = sum(1 for b, c in pairs if c.score > b.score)
    regressed = sum(1 for b, c in pairs if c.score < b.score)

    body = (
        f"<h1>Recompilation report: {html.escape(result.program)}</h1>"
        f"<p class='muted'>{html.escape(_dt.datetime.now(_dt.UTC).isoformat(timespec='seconds'))}</p>"
        f"<p class='verdict {'pass' if passes else 'fail'}'>{html.escape(verdict)}</p>"
        f"<h2>Held-out comparison</h2>{_table_html(headers, rows)}{_img(png)}"
        f"<h2>Run</h2>{_table_html(['', ''], facts)}"
        f"<h2>Per example ({improved} improved, {regressed} regressed)</h2>"
        + _table_html(
            ["inputs", "expected", "baseline output", "score", "candidate output", "score"], ex_rows, classes
        )
    )
    markdown = (
        f"# {result.program}: {result.optimizer.name}\n\n{verdict}\n\n"
        + _markdown(headers, rows)
        + "\n"
        + "\n".join(f"- {k}: {v}" for k, v in facts)
        + "\n"
    )
    data = {
        **result.to_dict(examples=True),
        "margin": margin,
        "passes_gate": passes,
        "baseline_version": baseline_version,
        "candidate_version": candidate_version,
        "active_version": active_version,
    }
    return _write(out, "compile", _page(f"{result.program} recompilation", body), markdown, data, png)


def write_models_report(
    rows: Sequence[ModelRow],
    directory: str | Path,
    *,
    program: str,
    metric: str,
    dataset_id: str,
) -> ReportFiles:
    """Write ``models.{html,md,json,png}``: score, cost, latency and score per dollar per model."""
    out = Path(directory)
    headers, table = models_table(rows)
    png = _models_plot(rows)
    n = rows[0].baseline.n if rows else 0
    body = (
        f"<h1>Model comparison: {html.escape(program)}</h1>"
        f"<p>{html.escape(metric)} on {n} examples of {html.escape(dataset_id)}. "
        "Score per $ is score points per dollar spent on the whole evaluation; "
        "<em>free</em> means the model cost nothing (local); n/a means no price is known.</p>"
        f"{_table_html(headers, table)}{_img(png)}"
    )
    markdown = f"# {program}: models\n\n{metric} on {n} examples of {dataset_id}\n\n" + _markdown(
        headers, table
    )
    data = {
        "program": program,
        "metric": metric,
        "dataset_id": dataset_id,
        "rows": [
            {
                "model": r.model,
                "optimizer": r.optimizer,
                "compile_seconds": r.compile_seconds,
                "baseline": r.baseline.to_dict(examples=False),
                "candidate": r.candidate.to_dict(examples=False) if r.candidate else None,
            }
            for r in rows
        ],
    }
    return _write(out, "models", _page(f"{program} model comparison", body), markdown, data, png)


# -- two programs side by side --------------------------------------------------------------------


@dataclass(frozen=True)
class ProgramComparison:
    """Two programs evaluated on the same examples: a baseline (an agent) and a candidate (a workflow).

    The candidate is *ready* when its score is at most ``tolerance`` points (of 100) below the baseline's.
    """

    baseline: EvalResult
    candidate: EvalResult
    tolerance: float = 2.0
    """Points (0-100) the candidate may lose against the baseline and still be ready."""

    @property
    def delta(self) -> float:
        """Candidate minus baseline score, in points."""
        return 100 * (self.candidate.score - self.baseline.score)

    @property
    def ready(self) -> bool:
        """Whether the candidate's score is within the tolerance of the baseline's."""
        return self.delta >= -self.tolerance - 1e-9

    def ratio(self, measure: str) -> float | None:
        """Candidate over baseline for ``lm_calls``, ``total_tokens``, ``latency_p50_s`` or ``latency_p95_s``."""
        base = float(getattr(self.baseline, measure))
        return None if base == 0 else float(getattr(self.candidate, measure)) / base

    @property
    def verdict(self) -> str:
        """One sentence: ready or not, and why."""
        base, cand = self.baseline, self.candidate
        calls = self.ratio("lm_calls")
        latency = self.ratio("latency_p50_s")
        cost = (
            f" It makes {calls:.0%} of the LM calls"
            + (f" at {latency:.0%} of the p50 latency." if latency else ".")
            if calls is not None
            else ""
        )
        head = (
            f"{cand.program} scores {_pct(cand.score)} against {base.program}'s {_pct(base.score)} "
            f"({self.delta:+.1f} points, tolerance {self.tolerance:g}) on {base.n} examples: "
        )
        cached = base.cache_hits + cand.cache_hits
        if cached:
            # A cached answer takes no model time: calls and latency ratios would compare a replay.
            cost = (
                f" {cached} LM call(s) came from DSPy's response cache, so LM calls and latency are not "
                "compared (run without --allow-cache)."
            )
        return head + ("READY." if self.ready else "NOT ready.") + cost


_COMPARE_HEADERS = (
    "",
    "program",
    "score",
    "ran ok",
    "LM calls/example",
    "tokens/example",
    "p50",
    "p95",
    "cost",
)


def comparison_table(comparison: ProgramComparison) -> tuple[tuple[str, ...], list[list[str]]]:
    """Headers and two rows (baseline, candidate): quality, LM calls, tokens, latency and cost."""
    rows = []
    for label, r in (("baseline", comparison.baseline), ("candidate", comparison.candidate)):
        rows.append(
            [
                label,
                r.program,
                _pct(r.score),
                f"{r.n - r.errors}/{r.n}",
                (f"{r.lm_calls / r.n:.2f}" if r.n else "0")
                + (f" (+{r.cache_hits / r.n:.2f} cached)" if r.cache_hits and r.n else ""),
                f"{r.total_tokens / r.n:,.0f}" if r.n else "0",
                _ms(r.latency_p50_s),
                _ms(r.latency_p95_s),
                fmt_cost(r.cost_usd),
            ]
        )
    return _COMPARE_HEADERS, rows


def _comparison_plot(comparison: ProgramComparison) -> bytes | None:
    fig = _figure()
    if fig is None:
        return None
    runs = [comparison.baseline, comparison.candidate]
    labels = [_short(r.program, 28) for r in runs]
    colors = ["#8c8c8c", "#2b7bba" if comparison.ready else "#c0392b"]
    ax1, ax2, ax3 = fig.subplots(1, 3)
    bars = ax1.bar(labels, [100 * r.score for r in runs], color=colors)
    ax1.bar_label(bars, labels=[_pct(r.score) for r in runs])
    ax1.set_ylim(0, 105)
    ax1.set_title(f"{comparison.baseline.metric} (n={comparison.baseline.n})")
    bars = ax2.bar(labels, [r.lm_calls / max(1, r.n) for r in runs], color=colors)
    ax2.bar_label(bars, fmt="%.2f")
    ax2.set_title("LM calls per example")
    ax3.bar(labels, [1000 * r.latency_p50_s for r in runs], color=colors, label="p50")
    ax3.scatter(labels, [1000 * r.latency_p95_s for r in runs], color="black", marker="_", s=400, label="p95")
    ax3.set_title("latency per example (ms)")
    ax3.legend(loc="lower right", fontsize=8)
    for ax in (ax1, ax2, ax3):
        ax.tick_params(axis="x", labelsize=7)
    fig.suptitle(
        f"{'ready' if comparison.ready else 'not ready'} ({comparison.delta:+.1f} points)", fontsize=11
    )
    return _png(fig)


def comparison_markdown(comparison: ProgramComparison) -> str:
    """The verdict and the side-by-side table as Markdown (no heading, so it fits under any)."""
    return f"{comparison.verdict}\n\n" + _markdown(*comparison_table(comparison))


def write_comparison_report(comparison: ProgramComparison, directory: str | Path) -> ReportFiles:
    """Write ``compare.{html,md,json,png}``: two programs side by side, per example, and the verdict."""
    out = Path(directory)
    base, cand = comparison.baseline, comparison.candidate
    headers, rows = comparison_table(comparison)
    png = _comparison_plot(comparison)
    verdict = comparison.verdict
    _, ex_rows, classes = _example_pairs(base, cand)
    body = (
        f"<h1>Comparison: {html.escape(base.program)} vs {html.escape(cand.program)}</h1>"
        f"<p class='muted'>{html.escape(_dt.datetime.now(_dt.UTC).isoformat(timespec='seconds'))}; "
        f"{html.escape(base.metric)} on {base.n} examples of {html.escape(base.dataset_id)}</p>"
        f"<p class='verdict {'pass' if comparison.ready else 'fail'}'>{html.escape(verdict)}</p>"
        f"{_table_html(headers, rows)}{_img(png)}"
        "<h2>Per example</h2>"
        + _table_html(
            ["inputs", "expected", "baseline output", "score", "candidate output", "score"], ex_rows, classes
        )
    )
    markdown = f"# {base.program} vs {cand.program}\n\n" + comparison_markdown(comparison)
    data = {
        "baseline": base.to_dict(examples=True),
        "candidate": cand.to_dict(examples=True),
        "tolerance_points": comparison.tolerance,
        "delta_points": comparison.delta,
        "ready": comparison.ready,
        "lm_calls_ratio": comparison.ratio("lm_calls"),
        "latency_p50_ratio": comparison.ratio("latency_p50_s"),
        "verdict": verdict,
    }
    return _write(out, "compare", _page(f"{base.program} vs {cand.program}", body), markdown, data, png)
