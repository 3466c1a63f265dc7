"""Agents on the embedded model: valid-step rate and task success on the bundled inventory task.

Both sides run the same questions (``geode.examples.inventory.TASKS``: stock lookups, arithmetic, and both
combined) with the same tools, the same ``geode.LocalLM`` (SmolLM2-135M by default), the adapter
``geode.Runtime`` picks for it (``geode.SmallModelAdapter`` for a local model), greedy decoding, no response cache and at most 5 iterations:

* ours: ``geode.Agent``. Each step is schema-constrained (tool-name enum, union of the tools' argument
  schemas), a repeated identical call ends the loop, unparseable replies become corrective observations;
* ablation (``--sides ours,ours-per-field,react``): ``geode.Agent(grammar_schema=False)``, which constrains
  the tool name and the arguments as separate fields (so a tool can get another tool's arguments) and
  leaves free text unbounded;
* anchor: ``dspy.ReAct``, whose ``next_tool_args`` is an open dict, so JSON mode cannot constrain it and an
  unparseable reply raises out of the run.

The two sides alternate question by question, so load on a shared machine hits both alike.

Metrics:
* valid-step rate: steps where the model produced a usable step (parsed, an allowed tool, arguments
  that fit the tool) over all model steps. For ``dspy.ReAct`` a run that crashes on a parse error
  counts one invalid step, and a step whose tool call failed on its arguments counts as invalid.
* task success: the final answer states the expected number.

    .venv/bin/python benchmarks/bench_agent.py            # 8 questions x 2 sides
    .venv/bin/python benchmarks/bench_agent.py --quick    # 3 questions x 2 sides
    .venv/bin/python benchmarks/bench_agent.py --model-path other.gguf --sides ours
"""

from __future__ import annotations

import argparse
import json
import logging
import time
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import dspy
from dspy.signatures.signature import make_signature
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from geode.agents.calculator import calculate
from geode.agents.steps import Budget
from geode.examples.inventory import TASKS, InventoryTask, build_agent, is_correct, lookup_stock
from geode.runtime.lm import build_adapter
from geode.runtime.lm.local import LocalLM

Side = Literal["ours", "ours-per-field", "react"]
MAX_ITERS = 5
QUICK = (0, 4, 6)  # a lookup, an arithmetic question, and one needing both tools


@dataclass
class RunResult:
    side: str
    question: str
    expected: float
    answer: str | None
    correct: bool
    model_steps: int
    valid_steps: int
    ended_by: str
    lm_calls: int
    seconds: float
    tools: list[str] = field(default_factory=list[str])


class _LMCalls(dspy.utils.callback.BaseCallback):
    def __init__(self) -> None:
        self.count = 0

    def on_lm_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        self.count += 1


def run_ours(task: InventoryTask, lm: LocalLM, *, grammar_schema: bool | None = None) -> RunResult:
    agent = build_agent(Budget(max_iters=MAX_ITERS), grammar_schema=grammar_schema)
    started = time.perf_counter()
    with dspy.context(lm=lm, adapter=build_adapter("auto", lm)):
        pred = agent(question=task.question)
    seconds = time.perf_counter() - started
    model_steps = [s for s in pred.steps if s.outcome != "budget"]
    return RunResult(
        side="ours" if grammar_schema is None else "ours-per-field",
        question=task.question,
        expected=task.expected,
        answer=None if pred.answer is None else str(pred.answer),
        correct=is_correct(pred.answer, task.expected),
        model_steps=len(model_steps),
        valid_steps=sum(s.well_formed for s in model_steps),
        ended_by=str(pred.termination.reason),
        lm_calls=pred.termination.lm_calls,
        seconds=seconds,
        tools=[f"{s.tool}({json.dumps(dict(s.args))})" if s.tool else "(unparsed)" for s in pred.steps],
    )


_ARG_ERRORS = ("is not in the tool's args", "is invalid", "missing", "unexpected keyword")


def run_react(task: InventoryTask, lm: LocalLM) -> RunResult:
    react = dspy.ReAct(
        make_signature(
            "question -> answer", "Answer questions about the shop's stock. Answer with a number."
        ),
        tools=[lookup_stock, calculate],
        max_iters=MAX_ITERS,
    )
    counter = _LMCalls()
    started = time.perf_counter()
    answer: str | None = None
    trajectory: dict[str, Any] = {}
    crashed = False
    try:
        with dspy.context(lm=lm, adapter=build_adapter("auto", lm), callbacks=[counter]):
            pred = react(question=task.question)
        answer = None if pred.answer is None else str(pred.answer)
        trajectory = dict(pred.trajectory)
    except Exception as err:  # dspy.ReAct lets AdapterParseError (and others) escape the run
        crashed = True
        answer = f"<crashed: {type(err).__name__}>"
    seconds = time.perf_counter() - started
    names = [trajectory[k] for k in trajectory if k.startswith("tool_name_")]
    observations = [str(trajectory[k]) for k in trajectory if k.startswith("observation_")]
    invalid = sum(
        obs.startswith("Execution error") and any(marker in obs for marker in _ARG_ERRORS)
        for obs in observations
    )
    model_steps = len(names) + int(crashed)
    if crashed:
        ended_by = "parse error (crash)"
    elif names and names[-1] == "finish":
        ended_by = "finish"
    else:
        ended_by = "max_iters"
    args = [trajectory.get(f"tool_args_{i}", {}) for i in range(len(names))]
    return RunResult(
        side="react",
        question=task.question,
        expected=task.expected,
        answer=answer,
        correct=not crashed and is_correct(answer, task.expected),
        model_steps=model_steps,
        valid_steps=len(names) - invalid,
        ended_by=ended_by,
        lm_calls=counter.count,
        seconds=seconds,
        tools=[f"{n}({json.dumps(a, default=str)})" for n, a in zip(names, args, strict=True)],
    )


def run_ours_per_field(task: InventoryTask, lm: LocalLM) -> RunResult:
    return run_ours(task, lm, grammar_schema=False)


RUNNERS = {"ours": run_ours, "ours-per-field": run_ours_per_field, "react": run_react}
LABELS = {
    "ours": "geode.Agent (ours)",
    "ours-per-field": "geode.Agent, per-field schema only (ablation)",
    "react": "dspy.ReAct (anchor)",
}


def summarize(results: list[RunResult], sides: list[str], console: Console) -> dict[str, dict[str, Any]]:
    table = Table(title=f"Inventory task, {len(results) // len(sides)} questions, max {MAX_ITERS} iterations")
    for column in (
        "side",
        "valid steps",
        "runs finished cleanly",
        "task success",
        "ended by",
        "s / run",
        "LM calls / run",
    ):
        table.add_column(column, justify="left" if column in ("side", "ended by") else "right")
    summary: dict[str, dict[str, Any]] = {}
    for side in sides:
        mine = [r for r in results if r.side == side]
        steps = sum(r.model_steps for r in mine)
        valid = sum(r.valid_steps for r in mine)
        clean = sum(not r.ended_by.startswith("parse error") for r in mine)
        correct = sum(r.correct for r in mine)
        ended = Counter(r.ended_by for r in mine)
        seconds = sum(r.seconds for r in mine) / len(mine)
        calls = sum(r.lm_calls for r in mine) / len(mine)
        summary[side] = {
            "valid_steps": valid,
            "model_steps": steps,
            "valid_step_rate": valid / steps if steps else 0.0,
            "runs": len(mine),
            "runs_without_crash": clean,
            "correct": correct,
            "ended_by": dict(ended),
            "seconds_per_run": seconds,
            "lm_calls_per_run": calls,
        }
        table.add_row(
            LABELS[side],
            f"{valid}/{steps} ({valid / steps:.0%})" if steps else "0/0",
            f"{clean}/{len(mine)}",
            f"{correct}/{len(mine)}",
            ", ".join(f"{k} {v}" for k, v in ended.most_common()),
            f"{seconds:.0f}",
            f"{calls:.1f}",
        )
    console.print(table)
    return summary


def per_question(results: list[RunResult], console: Console) -> None:
    table = Table(title="Per question")
    for column in ("side", "question", "expected", "answer", "ok", "steps", "ended by"):
        table.add_column(column)
    for r in results:
        answer = (r.answer or "")[:40]
        table.add_row(
            r.side,
            r.question[:48],
            f"{r.expected:g}",
            answer,
            "yes" if r.correct else "no",
            " ".join(r.tools)[:90],
            r.ended_by,
        )
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help=f"{len(QUICK)} questions instead of {len(TASKS)}"
    )
    parser.add_argument("--sides", default="ours,react", help="comma-separated: ours, ours-per-field, react")
    parser.add_argument(
        "--model-path", type=Path, default=None, help="a GGUF instruct model (default SmolLM2-135M)"
    )
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None, help="also write every run and the summary here")
    args = parser.parse_args()

    logging.getLogger("dspy").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    console = Console()
    sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    unknown = [s for s in sides if s not in RUNNERS]
    if unknown:
        parser.error(f"unknown side(s): {', '.join(unknown)}")
    tasks = [TASKS[i] for i in QUICK] if args.quick else list(TASKS)

    lm = LocalLM(args.model_path, cache=False, temperature=0.0, max_tokens=256, threads=args.threads)
    console.print(f"model: {lm.model}  sides: {', '.join(sides)}  questions: {len(tasks)}")
    results: list[RunResult] = []
    with Progress(console=console) as progress:
        job = progress.add_task("agent runs", total=len(tasks) * len(sides))
        for index, task in enumerate(tasks):
            # Alternate which side goes first, so machine load hits both alike.
            order = sides if index % 2 == 0 else list(reversed(sides))
            for side in order:
                progress.update(job, description=f"{side}: {task.question[:40]}")
                results.append(RUNNERS[side](task, lm))
                progress.advance(job)

    results.sort(key=lambda r: (tasks.index(next(t for t in tasks if t.question == r.question)), r.side))
    per_question(results, console)
    summary = summarize(results, sides, console)
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {"model": lm.model, "summary": summary, "runs": [asdict(r) for r in results]}, indent=2
            )
        )
        console.print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
