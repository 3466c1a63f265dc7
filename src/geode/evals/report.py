"""Reports for recompilation and model comparison: a table (Markdown), a plot (PNG) and one HTML file.

The HTML report is self-contained (styles inline, the plot embedded as a data URI) so it can be
attached to a ticket or opened from disk. Every value shown is HTML-escaped: datasets hold user text
and LM output. The plot needs matplotlib (the ``report`` extra); without it the report is written
without a plot and says so.

The pieces (formats, tables, plots, the page) are in ``report_parts``; two programs side by side in
``comparison_report``. This module writes the recompilation and model reports and re-exports the rest.
"""

from __future__ import annotations

import datetime as _dt
import html
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from geode.evals.comparison_report import (
    ProgramComparison,
    comparison_markdown,
    comparison_table,
    write_comparison_report,
)
from geode.evals.compile import CompileResult
from geode.evals.eval_results import EvalResult

# demo/report.py builds its page from _figure, _img, _page, _png and _table_html, imported from here.
from geode.evals.report_parts import (
    _EVAL_HEADERS,
    ReportFiles,
    _eval_row,
    _example_pairs,
    _figure,
    _fmt_spd,
    _img,
    _markdown,
    _ms,
    _page,
    _pct,
    _png,
    _table_html,
    _write,
    fmt_cost,
)

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
    facts = _compile_facts(result, baseline_version, candidate_version, active_version)
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


def _compile_facts(
    result: CompileResult,
    baseline_version: str | None,
    candidate_version: str | None,
    active_version: str | None,
) -> list[list[str]]:
    """The recompilation's facts, one ``[name, value]`` row each: what ran, on what, at what cost."""
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
    return facts


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
