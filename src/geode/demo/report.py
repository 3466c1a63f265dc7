"""The demo's summary: a table (quality, LM calls, tokens, latency p50), an HTML report, and the by-hand commands.

The report folder holds ``index.html`` (the summary table, a plot of the programs, the recompilation's
candidates, the gate's decision, the Phoenix link and the commands) and the agent-vs-workflow comparison
(``compare.html``, written by the function ``geode compare`` uses). The pipeline writes it into a staging
folder and renames it into place. Every path it names is the completed run's.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from pathlib import Path

from rich.table import Table

from geode.demo.pipeline import AGENT_PROGRAM, comparison
from geode.demo.result import DemoResult, workflow_program

# The HTML building blocks of the learning-loop reports, so the demo's page looks like theirs.
from geode.evals.report import _figure, _img, _page, _png, _table_html, write_comparison_report
from geode.examples import helpdesk

__all__ = ["SUMMARY_HEADERS", "by_hand_commands", "summary_rows", "summary_table", "write_demo_report"]

SUMMARY_HEADERS = ("program", "version", "quality", "LM calls", "tokens", "latency p50", "ran ok")


def summary_rows(result: DemoResult) -> list[list[str]]:
    """One row per evaluated program: quality on the held-out questions and what it cost per question."""
    rows = []
    for row in result.rows:
        r = row.result
        n = max(1, r.n)
        rows.append(
            [
                row.label,
                row.version or "-",
                f"{100 * r.score:.0f}% ({row.correct}/{r.n})",
                f"{r.lm_calls / n:.1f}",
                f"{r.total_tokens / n:,.0f}",
                f"{r.latency_p50_s:.1f} s",
                f"{r.n - r.errors}/{r.n}",
            ]
        )
    return rows


def summary_table(result: DemoResult) -> Table:
    """The summary as a rich table (LM calls, tokens: per held-out question)."""
    n = result.rows[0].result.n if result.rows else 0
    table = Table(title=f"held-out questions: {n}, metric {helpdesk.metric.name}", title_justify="left")
    for header in SUMMARY_HEADERS:
        table.add_column(header, justify="left" if header in ("program", "version") else "right")
    for cells in summary_rows(result):
        table.add_row(*cells)
    return table


def by_hand_commands(result: DemoResult) -> list[tuple[str, str]]:
    """Each stage as the command that does it by hand, with the files this run wrote."""
    settings = result.settings
    run = result.run_dir
    spans = run / "spans.jsonl"
    spec = workflow_program(settings)
    corpus = " ".join(str(p) for p in helpdesk.corpus_paths())
    return [
        ("start Phoenix", "geode phoenix"),
        (
            "ingest",
            f"geode ingest {corpus} --collection {helpdesk.COLLECTION} --no-code "
            + " ".join(f"--meta {k}={v}" for k, v in helpdesk.CHUNKING.items()),
        ),
        (
            "ask the agent",
            "geode run geode.demo.app:agent -i question='How much does the Ridgeline tent cost?'",
        ),
        ("look at a run", f"geode trace show --last --source {spans}"),
        ("mine", f"geode mine {AGENT_PROGRAM} --source {spans} --out mined.jsonl"),
        (
            "crystallize",
            f"geode crystallize geode.demo.app:agent --source {spans} --program-name {AGENT_PROGRAM} "
            "--success-threshold 1 --out workflow.json",
        ),
        (
            "compare",
            f"geode compare geode.demo.app:agent {spec} --dataset {run / 'heldout.jsonl'} "
            "--metric geode.examples.helpdesk:metric",
        ),
        (
            "recompile",
            f"geode compile {spec} --trainset {run / 'labelled.jsonl'} --metric geode.examples.helpdesk:metric "
            "--min-train 1 --min-heldout 1",
        ),
        ("versions", f"geode versions {spec}"),
        ("serve the workflow", f"geode run {spec} -i question='What does overnight delivery cost?'"),
    ]


def _plot(result: DemoResult) -> bytes | None:
    fig = _figure()
    if fig is None or not result.rows:
        return None
    labels = [row.label for row in result.rows]
    evals = [row.result for row in result.rows]
    ax1, ax2, ax3 = fig.subplots(1, 3)
    bars = ax1.bar(labels, [100 * r.score for r in evals], color="#2b7bba")
    ax1.bar_label(bars, fmt="%.0f%%")
    ax1.set_ylim(0, 105)
    ax1.set_title(f"quality (n={evals[0].n})")
    bars = ax2.bar(labels, [r.lm_calls / max(1, r.n) for r in evals], color="#8c8c8c")
    ax2.bar_label(bars, fmt="%.1f")
    ax2.set_title("LM calls per question")
    bars = ax3.bar(labels, [r.latency_p50_s for r in evals], color="#8c8c8c")
    ax3.bar_label(bars, fmt="%.1f")
    ax3.set_title("latency p50 (s)")
    return _png(fig)


def _links(names: Sequence[tuple[str, str]]) -> str:
    return " · ".join(f"<a href='{html.escape(href)}'>{html.escape(text)}</a>" for text, href in names)


def write_demo_report(result: DemoResult, directory: Path) -> None:
    """Write ``index.html`` (+ ``summary.json``, and the comparison and compile reports) into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    links: list[tuple[str, str]] = []
    pair = comparison(result)
    if pair is not None:
        write_comparison_report(pair, directory)
        links.append(("agent vs workflow", "compare.html"))
    if result.crystallization is not None:
        (directory / "workflow.md").write_text(result.crystallization.report(), encoding="utf-8")
        links.append(("how the workflow was derived", "workflow.md"))
    phoenix = result.phoenix.url if result.phoenix else None
    facts = [
        ["run", result.run_id],
        ["Phoenix", f"{phoenix} (project geode-demo)" if phoenix else "not used"],
        ["run folder", str(result.run_dir)],
        ["training runs", f"{len(result.train_scores)} ({sum(result.train_scores):.0f} correct)"],
        ["mined examples", str(len(result.mining.dataset)) if result.mining else "-"],
        ["crystallization", result.kept_agent or (result.cost.describe() if result.cost else "-")],
        ["gate", result.promotion or "-"],
        *[[f"skipped: {stage}", why] for stage, why in result.skipped.items()],
        *[[f"time: {stage}", f"{seconds:.0f} s"] for stage, seconds in result.seconds.items()],
    ]
    commands = "".join(
        f"<tr><td>{html.escape(what)}</td><td><code>{html.escape(cmd)}</code></td></tr>"
        for what, cmd in by_hand_commands(result)
    )
    search = [
        [c["name"], c["description"], f"{100 * c['score']:.0f}% of {c['n']}", f"{c['latency_p50_s']:.1f} s"]
        for c in result.search
    ]
    body = (
        "<h1>geode demo: the learning loop on the helpdesk app</h1>"
        f"<p>{_links(links)}</p>"
        f"{_table_html(SUMMARY_HEADERS, summary_rows(result))}{_img(_plot(result))}"
        f"<h2>Run</h2>{_table_html(['', ''], facts)}"
        + (
            "<h2>Recompilation candidates (scored on the labelled training runs)</h2>"
            + _table_html(["candidate", "what", "quality", "latency p50"], search)
            if search
            else ""
        )
        + f"<h2>By hand</h2><table><tbody>{commands}</tbody></table>"
    )
    (directory / "index.html").write_text(_page("geode demo", body), encoding="utf-8")
    # The per-question results too (the run's summary.json has the figures only).
    data = {**result.summary(), "results": [r.result.to_dict(examples=True) for r in result.rows]}
    (directory / "summary.json").write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
