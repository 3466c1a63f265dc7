"""Two programs side by side on the same examples (``geode compare``): the comparison, its table and report."""

from __future__ import annotations

import datetime as _dt
import html
from dataclasses import dataclass
from pathlib import Path

from geode.evals.eval_results import EvalResult
from geode.evals.report_parts import (
    ReportFiles,
    _example_pairs,
    _figure,
    _img,
    _markdown,
    _ms,
    _page,
    _pct,
    _png,
    _short,
    _table_html,
    _write,
    fmt_cost,
)

__all__ = ["ProgramComparison", "comparison_markdown", "comparison_table", "write_comparison_report"]


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
