"""Agent vs its crystallized workflow on a bundled task: quality, LM calls and latency per request.

Tasks (``--app``): ``inventory`` (``geode.examples.inventory``: stock lookups, arithmetic, both) and
``helpdesk`` (``geode.examples.helpdesk``: search over the ingested help-centre corpus plus a calculator).
Three phases, one process, one LM:

1. **record**: the agent answers a set of *recording* questions through ``geode.Runtime`` with tracing into
   memory, as it would in production; each run is scored (the task's own check) and the score rides along
   as feedback, so wrong runs do not become patterns;
2. **crystallize**: ``geode.crystallize`` reads those traces and builds the workflow (its report is printed);
3. **compare**: agent and workflow answer the *evaluation* questions (inventory: the bundled ``TASKS``;
   helpdesk: the held-out split; none seen while recording), alternating side by side question by question
   so machine load hits both alike.
   Per request: correct or not, LM calls (every call the LM got, fallbacks to the agent included),
   latency.

Target (issue 5): the workflow at <= 50% of the agent's LM calls and latency, quality within 2 points.

    .venv/bin/python benchmarks/bench_crystallize.py                      # embedded SmolLM2-135M
    .venv/bin/python benchmarks/bench_crystallize.py --model-path m.gguf  # another local GGUF model
    .venv/bin/python benchmarks/bench_crystallize.py --quick              # fewer questions
    .venv/bin/python benchmarks/bench_crystallize.py --scripted           # the tests' scripted policy
    .venv/bin/python benchmarks/bench_crystallize.py --app helpdesk       # the demo app (ingests first)
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import dspy
from opentelemetry.sdk.trace import ReadableSpan
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

import geode
from geode.agents.crystallize import (
    Crystallization,
    CrystallizeError,
    CrystallizeOptions,
    RunScore,
    crystallize,
    workflow_route,
)
from geode.agents.steps import Budget
from geode.examples.inventory import STOCK, TASKS, build_agent, is_correct
from geode.retrieval.ingest import Ingestor
from geode.runtime.lm import build_adapter
from geode.runtime.lm.local import LocalLM
from geode.runtime.settings import Settings, TracingSettings
from geode.testing import ScriptedLM, in_memory_tracing
from geode.traces.otlp_json import dumps_request, encode_spans
from geode.traces.sources import InMemoryTraceSource, OtlpFileTraceSource, TraceSource

MAX_ITERS = 5


def _plural(item: str) -> str:
    return f"{item}s"


def recording_questions() -> list[tuple[str, float]]:
    """Questions for the recording phase: none of them is among the evaluation questions (``TASKS``)."""
    items = list(STOCK)
    questions: list[tuple[str, float]] = []
    for item in items:
        questions.append((f"How many {_plural(item)} do we have?", STOCK[item]))
        questions.append((f"How many units of {item} are in stock?", STOCK[item]))
    for a, op, b, value in [
        (15, "times", 4, 60),
        (250, "plus", 750, 1000),
        (6, "times", 8, 48),
        (300, "plus", 45, 345),
        (81, "minus", 9, 72),
        (9, "times", 11, 99),
    ]:
        questions.append((f"What is {a} {op} {b}?", value))
    for a, b in [("widget", "sprocket"), ("gadget", "gizmo"), ("sprocket", "gadget"), ("gizmo", "widget")]:
        questions.append(
            (f"How many {_plural(a)} and {_plural(b)} are in stock together?", STOCK[a] + STOCK[b])
        )
    return questions


class _LMCalls(dspy.utils.callback.BaseCallback):
    def __init__(self) -> None:
        self.count = 0

    def on_lm_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        self.count += 1


Check = Callable[[Any, Any], bool]
"""Whether an answer is right: ``check(answer, gold)``."""


@dataclass
class Task:
    name: str
    agent: dspy.Module
    recording: list[tuple[str, Any]]
    evaluation: list[tuple[str, Any]]
    check: Check


@contextmanager
def inventory_task(quick: bool) -> Iterator[Task]:
    recording = recording_questions()
    evaluation: list[tuple[str, Any]] = [(t.question, t.expected) for t in TASKS]
    if quick:
        recording = recording[::3]
        evaluation = [evaluation[i] for i in (0, 1, 4, 6)]
    yield Task("inventory", build_agent(Budget(max_iters=MAX_ITERS)), list(recording), evaluation, is_correct)


@contextmanager
def helpdesk_task(quick: bool, lm: dspy.BaseLM, console: Console) -> Iterator[Task]:
    from geode.examples import helpdesk

    with tempfile.TemporaryDirectory(prefix="bench-crystallize-") as home:
        settings = Settings(home=Path(home), tracing=TracingSettings(enabled=False))
        with geode.Runtime(settings, lm=lm) as rt:
            with console.status("ingesting the helpdesk corpus"):
                Ingestor(rt.store, rt.embedder).ingest(helpdesk.corpus_paths(), helpdesk.COLLECTION)
            agent = helpdesk.build_agent(rt.retriever(helpdesk.COLLECTION, k=2))
            train = helpdesk.pick(helpdesk.load_questions("train"), 8 if quick else 20)
            heldout = helpdesk.pick(helpdesk.load_questions("heldout"), 4 if quick else 10)
            yield Task(
                "helpdesk",
                agent,
                [(q.question, q.answer) for q in train],
                [(q.question, q.answer) for q in heldout],
                lambda got, gold: helpdesk.score_answer(gold, got) >= 1.0,
            )


@dataclass
class Answered:
    side: str
    question: str
    expected: Any
    answer: str | None
    correct: bool
    lm_calls: int
    seconds: float
    route: str | None = None
    fallback: str | None = None


def record(
    agent: dspy.Module, lm: dspy.BaseLM, questions: list[tuple[str, Any]], console: Console, check: Check
) -> tuple[list[ReadableSpan], dict[str, RunScore], list[Answered]]:
    provider, exporter = in_memory_tracing()
    scores: dict[str, RunScore] = {}
    runs: list[Answered] = []
    with geode.Runtime(lm=lm, tracer_provider=provider) as rt, Progress(console=console) as progress:
        job = progress.add_task("record agent runs", total=len(questions))
        for question, expected in questions:
            started = time.perf_counter()
            pred = rt.run(agent, question=question)
            seconds = time.perf_counter() - started
            ok = check(pred.answer, expected)
            trace_id = geode.trace_id_of(pred)
            if trace_id is not None:
                scores[trace_id] = RunScore(1.0 if ok else 0.0)
            runs.append(
                Answered(
                    "agent (recording)",
                    question,
                    expected,
                    _text(pred.answer),
                    ok,
                    pred.termination.lm_calls,
                    seconds,
                )
            )
            progress.advance(job)
    return list(exporter.get_finished_spans()), scores, runs


def save_runs(
    folder: Path, spans: list[ReadableSpan], scores: dict[str, RunScore], runs: list[Answered]
) -> None:
    """The recorded traces as an OTLP-JSON file (what the runtime writes), with the scores and answers."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "spans.jsonl").write_text(dumps_request(encode_spans(spans)) + "\n", encoding="utf-8")
    (folder / "scores.json").write_text(json.dumps({k: v.score for k, v in scores.items()}, indent=1))
    (folder / "recorded.json").write_text(json.dumps([asdict(r) for r in runs], indent=1))


def load_runs(folder: Path) -> tuple[TraceSource, dict[str, RunScore], list[Answered]]:
    """Runs saved by :func:`save_runs`."""
    scores = {k: RunScore(v) for k, v in json.loads((folder / "scores.json").read_text()).items()}
    runs = [Answered(**r) for r in json.loads((folder / "recorded.json").read_text())]
    return OtlpFileTraceSource(folder / "spans.jsonl"), scores, runs


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def answer(
    side: str, program: dspy.Module, lm: dspy.BaseLM, question: str, expected: Any, check: Check
) -> Answered:
    counter = _LMCalls()
    started = time.perf_counter()
    error: str | None = None
    pred: Any = None
    # The runtime's choice: geode.SmallModelAdapter for local models, DSPy's default otherwise.
    with dspy.context(lm=lm, adapter=build_adapter("auto", lm), callbacks=[counter]):
        try:
            pred = program(question=question)
        except Exception as err:  # a crash is a wrong answer, counted honestly
            error = f"{type(err).__name__}: {err}"[:80]
    seconds = time.perf_counter() - started
    got = error or _text(getattr(pred, "answer", None))
    choice = geode.fallback_choice(pred) if isinstance(pred, dspy.Prediction) else None
    return Answered(
        side,
        question,
        expected,
        got,
        error is None and check(got, expected),
        counter.count,
        seconds,
        route=workflow_route(pred) if isinstance(pred, dspy.Prediction) else None,
        fallback=None
        if choice is None
        else (choice.choice if choice.reason is None else f"fallback: {choice.reason[:60]}"),
    )


def summary_table(task: str, results: list[Answered], console: Console) -> dict[str, dict[str, float]]:
    sides = ["agent", "workflow"]
    table = Table(title=f"{task} task: {len(results) // 2} evaluation questions, same LM, alternating")
    for column in (
        "side",
        "correct",
        "quality",
        "LM calls / request",
        "s / request (mean)",
        "s / request (p50)",
        "fell back to agent",
    ):
        table.add_column(column, justify="left" if column == "side" else "right")
    summary: dict[str, dict[str, float]] = {}
    for side in sides:
        mine = [r for r in results if r.side == side]
        correct = sum(r.correct for r in mine)
        calls = sum(r.lm_calls for r in mine) / len(mine)
        mean = statistics.fmean(r.seconds for r in mine)
        p50 = statistics.median(r.seconds for r in mine)
        fell = sum(1 for r in mine if r.fallback and r.fallback.startswith("fallback"))
        summary[side] = {
            "correct": correct,
            "n": len(mine),
            "quality": correct / len(mine),
            "lm_calls": calls,
            "seconds_mean": mean,
            "seconds_p50": p50,
            "fallbacks": fell,
        }
        table.add_row(
            side,
            f"{correct}/{len(mine)}",
            f"{100 * correct / len(mine):.1f}%",
            f"{calls:.2f}",
            f"{mean:.1f}",
            f"{p50:.1f}",
            str(fell) if side == "workflow" else "-",
        )
    a, w = summary["agent"], summary["workflow"]
    table.add_row(
        "workflow / agent",
        "",
        f"{100 * (w['quality'] - a['quality']):+.1f} points",
        f"{w['lm_calls'] / a['lm_calls']:.0%}" if a["lm_calls"] else "-",
        f"{w['seconds_mean'] / a['seconds_mean']:.0%}" if a["seconds_mean"] else "-",
        f"{w['seconds_p50'] / a['seconds_p50']:.0%}" if a["seconds_p50"] else "-",
        "",
        style="bold",
    )
    console.print(table)
    return summary


def per_question(results: list[Answered], console: Console) -> None:
    table = Table(title="Per question")
    for column in ("side", "question", "expected", "answer", "ok", "LM calls", "s", "route / guard"):
        table.add_column(column)
    for r in results:
        table.add_row(
            r.side,
            r.question[:50],
            str(r.expected),
            (r.answer or "")[:30],
            "yes" if r.correct else "no",
            str(r.lm_calls),
            f"{r.seconds:.1f}",
            (r.route or r.fallback or "")[:70],
        )
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="8 recording questions and 4 evaluation questions"
    )
    parser.add_argument(
        "--model-path", type=Path, default=None, help="a GGUF instruct model (default SmolLM2-135M)"
    )
    parser.add_argument("--app", choices=("inventory", "helpdesk"), default="inventory")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--scripted",
        action="store_true",
        help="a scripted policy instead of a model (LM-call structure only; its latency means nothing)",
    )
    parser.add_argument("--min-share", type=float, default=0.6)
    parser.add_argument(
        "--agreement",
        type=float,
        default=0.8,
        help="share of a pattern's runs an argument rule must reproduce",
    )
    parser.add_argument(
        "--json", type=Path, default=None, help="also write every answer and the summary here"
    )
    parser.add_argument(
        "--save-runs", type=Path, default=None, help="save the recorded runs (OTLP-JSON) here"
    )
    parser.add_argument(
        "--runs", type=Path, default=None, help="reuse runs saved with --save-runs (skip recording)"
    )
    args = parser.parse_args()

    logging.getLogger("dspy").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    console = Console()
    lm: dspy.BaseLM
    if args.scripted:
        # The scripted policy of the unit tests: a competent "model" with no latency of its own, to show
        # the programs' structure (LM calls per request) when the agent does solve the task.
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from tests.unit.agents.crystallize.scenario import oracle

        lm = ScriptedLM(oracle, model="scripted-policy")
    else:
        lm = LocalLM(args.model_path, cache=False, temperature=0.0, max_tokens=256, threads=args.threads)
    scope = helpdesk_task(args.quick, lm, console) if args.app == "helpdesk" else inventory_task(args.quick)
    with scope as task:
        run(task, lm, args, console)


def run(task: Task, lm: dspy.BaseLM, args: argparse.Namespace, console: Console) -> None:
    agent, evaluation = task.agent, task.evaluation
    console.print(
        f"task: {task.name}  model: {lm.model}  recording: {len(task.recording)} questions  "
        f"evaluation: {len(evaluation)} questions"
    )
    started = time.perf_counter()
    source: TraceSource
    if args.runs is not None:
        source, scores, recorded = load_runs(args.runs)
        console.print(f"reusing the agent runs saved in {args.runs}")
    else:
        spans, scores, recorded = record(agent, lm, task.recording, console, task.check)
        source = InMemoryTraceSource(spans)
        if args.save_runs is not None:
            save_runs(args.save_runs, spans, scores, recorded)
    ok = sum(r.correct for r in recorded)
    console.print(
        f"{len(recorded)} agent runs ({time.perf_counter() - started:.0f} s); {ok} answered correctly"
    )
    try:
        options = CrystallizeOptions(min_share=args.min_share, agreement=args.agreement)
        result: Crystallization = crystallize(agent, source, scores=scores, options=options)
    except CrystallizeError as err:
        console.print(f"[bold red]no workflow:[/bold red] {err}")
        per_question(recorded, console)
        return
    console.print(result.report())
    workflow = result.workflow()

    results: list[Answered] = []
    with Progress(console=console) as progress:
        job = progress.add_task("agent vs workflow", total=2 * len(evaluation))
        for index, (question, expected) in enumerate(evaluation):
            sides = [("agent", agent), ("workflow", workflow)]
            for side, program in sides if index % 2 == 0 else list(reversed(sides)):
                results.append(answer(side, program, lm, question, expected, task.check))
                progress.advance(job)
    results.sort(key=lambda r: (evaluation.index((r.question, r.expected)), r.side))
    per_question(results, console)
    summary = summary_table(task.name, results, console)
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {
                    "task": task.name,
                    "model": lm.model,
                    "summary": summary,
                    "spec": json.loads(result.spec.to_json()),
                    "recorded": [asdict(r) for r in recorded],
                    "evaluated": [asdict(r) for r in results],
                },
                indent=2,
            )
        )
        console.print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
