"""The helpdesk agent on the embedded model: success rate, LM calls and search arguments, per thought cap.

`geode demo` crystallizes the agent's correct runs, so it needs an agent that succeeds often enough and
searches with useful arguments. This runs the helpdesk agent (the demo's tools and corpus, code blocks left
out) on training questions through ``geode.Runtime`` (response cache off, at most 128 tokens per call) once
per ``--thought`` cap and ``--tools`` set and reports, for each: correct answers, mean LM calls, p50 latency, and what the
search arguments were: the question (or a near copy of it), a cut-off copy of the step's own thought, or
something else. A thought cap of 40 characters cut the model's thought mid-word and it copied the stub
into the search argument (``"The next-t"``).

    .venv/bin/python benchmarks/bench_helpdesk_agent.py --thought 40 160 --n 12
    .venv/bin/python benchmarks/bench_helpdesk_agent.py --thought 160 --tools search search+calculate
    .venv/bin/python benchmarks/bench_helpdesk_agent.py --thought 160          # all 48 training questions
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import dspy
from rich.console import Console
from rich.table import Table

from geode.agents.steps import Budget
from geode.evals.metrics import normalize_text
from geode.examples import helpdesk
from geode.retrieval import Ingestor, Retriever
from geode.runtime.runtime import Runtime
from geode.runtime.settings import LMSettings, Settings, TracingSettings


def _kind(arg: str, question: str, thought: str) -> str:
    """``question`` (a near copy), ``thought stub`` (a prefix of the step's thought), ``empty`` or ``other``."""
    a, q, t = normalize_text(arg), normalize_text(question), normalize_text(thought)
    if not a:
        return "empty"
    aw, qw = set(a.split()), set(q.split())
    # The question, or most of its words and little else (a truncated or trimmed copy).
    if a == q or q in a or (len(aw & qw) >= 0.6 * len(qw) and len(aw - qw) <= 2):
        return "question"
    if t and (t.startswith(a) or a.startswith(t)):
        return "thought stub"
    return "other"


def run(rt: Runtime, questions: list[helpdesk.Question], thought: int, calculator: bool) -> dict[str, Any]:
    retriever = Retriever(rt.store, rt.embedder, helpdesk.COLLECTION, k=2)
    agent = helpdesk.build_agent(
        retriever,
        max_thought_chars=thought,
        budget=Budget(max_iters=3, max_seconds=300),
        calculator=calculator,
    )
    rows: list[dict[str, Any]] = []
    for q in questions:
        started = time.perf_counter()
        with rt.batch(), dspy.track_usage() as usage:
            pred = agent(question=q.question)
        seconds = time.perf_counter() - started
        calls = sum(len(entries) for entries in usage.usage_data.values())
        searches = [
            _kind(str(s.args.get("question", "")), q.question, s.thought)
            for s in pred.steps
            if s.tool == "search"
        ]
        rows.append(
            {
                "id": q.id,
                "correct": float(helpdesk.metric(q.example(), pred)) >= 1.0,
                "seconds": seconds,
                "lm_calls": calls,
                "searches": searches,
                "args": [s.args for s in pred.steps],
                "thoughts": [s.thought for s in pred.steps],
                "answer": pred.answer,
            }
        )
    kinds = [k for r in rows for k in r["searches"]]
    return {
        "thought": thought,
        "tools": "search, calculate" if calculator else "search",
        "n": len(rows),
        "correct": sum(r["correct"] for r in rows),
        "lm_calls": statistics.mean(r["lm_calls"] for r in rows),
        "p50_s": statistics.median(r["seconds"] for r in rows),
        "searches": {k: kinds.count(k) for k in ("question", "thought stub", "other", "empty")},
        "rows": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--thought", type=int, nargs="+", default=[40, 160])
    parser.add_argument(
        "--tools",
        nargs="+",
        choices=["search", "search+calculate"],
        default=["search"],
        help="Tool sets to try.",
    )
    parser.add_argument("--n", type=int, help="Training questions (spread over the 48); default: all.")
    parser.add_argument("--json", type=Path)
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-agent-") as tmp:
        settings = Settings(home=Path(tmp))
        settings = settings.model_copy(
            update={
                "lm": LMSettings(**{**settings.lm.model_dump(), "cache": False, "max_tokens": 128}),
                "tracing": TracingSettings(enabled=False),
            }
        )
        rt = Runtime(settings)
        Ingestor(rt.store, rt.embedder, chunker=helpdesk.helpdesk_chunker()).ingest(
            helpdesk.corpus_paths(), helpdesk.COLLECTION
        )
        questions = helpdesk.pick(helpdesk.load_questions("train"), opts.n)
        load = os.getloadavg()[0]
        results = [
            run(rt, questions, cap, tools == "search+calculate")
            for tools in opts.tools
            for cap in opts.thought
        ]
        rt.close()
    table = Table(
        title=f"helpdesk agent, {len(questions)} training questions (load {load:.1f} -> {os.getloadavg()[0]:.1f})"
    )
    for column in [
        "tools",
        "thought cap",
        "correct",
        "LM calls / run",
        "p50",
        "search args: question",
        "thought stub",
        "other",
        "empty",
    ]:
        table.add_column(column, justify="right")
    for r in results:
        s = r["searches"]
        table.add_row(
            r["tools"],
            str(r["thought"]),
            f"{r['correct']}/{r['n']}",
            f"{r['lm_calls']:.1f}",
            f"{r['p50_s']:.1f} s",
            *(str(s[k]) for k in ("question", "thought stub", "other", "empty")),
        )
    Console(width=160).print(table)
    if opts.json:
        opts.json.write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
