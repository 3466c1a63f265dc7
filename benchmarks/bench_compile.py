"""The learning loop on the bundled QA task with the embedded model: baseline vs recompiled, and compile time.

Task: ``geode.examples.qa:program`` (answer from the two facts sharing most words with the question) on
``benchmarks/data/qa.jsonl`` (28 short factoid questions), scored with the ``contains`` metric on a
deterministic held-out split. Model: SmolLM2-135M-Instruct on llama.cpp (``geode.LocalLM``), greedy,
DSPy's cache off so every call is paid for.

Two sides in the same process, same loaded model, same split:

* geode:  ``geode.evals.compile_program`` (score the baseline on the held-out split, BootstrapFewShot on the
  train split, score the candidate), run in a Runtime's ``batch()`` scope, plus the promotion gate;
* anchor: the same three steps in plain DSPy (``dspy.Evaluate``, ``dspy.BootstrapFewShot``,
  ``dspy.Evaluate``) with the same LM and adapter.

Both sides should reach the same scores (greedy decoding, same prompts); the timings show what Geode's
per-example measurement costs on top of DSPy. The result is reported whatever it is: few-shot demos often
hurt a 135M model, and then the gate must refuse the candidate.

    .venv/bin/python benchmarks/bench_compile.py              # bootstrap, 40% held out
    .venv/bin/python benchmarks/bench_compile.py --quick      # fewer training examples, 2 demos
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import dspy
from rich.console import Console
from rich.table import Table

from geode.evals.compile import compile_program, demo_count
from geode.evals.dataset import load_dataset
from geode.evals.evaluate import Pricing
from geode.evals.metrics import contains
from geode.examples.qa import FactQA
from geode.runtime.registry import program_version
from geode.runtime.runtime import Runtime
from geode.runtime.settings import LMSettings, Settings, TracingSettings

DATA = Path(__file__).parent / "data" / "qa.jsonl"
MARGIN = 0.05


@dataclass
class Side:
    name: str
    baseline: float
    candidate: float
    demos: int
    baseline_eval_s: float
    compile_s: float
    candidate_eval_s: float

    @property
    def total_s(self) -> float:
        return self.baseline_eval_s + self.compile_s + self.candidate_eval_s


def run_geode(rt: Runtime, args: argparse.Namespace) -> tuple[Side, str]:
    data = load_dataset(DATA)
    t0 = time.perf_counter()
    with rt.batch():
        result = compile_program(
            FactQA(),
            data,
            contains,
            optimizer="bootstrap",
            heldout_fraction=args.heldout,
            seed=args.seed,
            max_bootstrapped_demos=args.max_demos,
            max_labeled_demos=args.max_demos,
            version_of=program_version,
            pricing=Pricing(free={str(rt.lm.model)}),
            min_heldout=5,
        )
    total = time.perf_counter() - t0
    base_s = result.baseline.duration_s
    cand_s = result.candidate.duration_s
    verdict = "promote" if result.passes_gate(MARGIN) else "refuse"
    side = Side(
        name="geode compile_program",
        baseline=result.baseline.score,
        candidate=result.candidate.score,
        demos=result.candidate_demos,
        baseline_eval_s=base_s,
        compile_s=total - base_s - cand_s,
        candidate_eval_s=cand_s,
    )
    detail = (
        f"held out n={result.baseline.n}, train n={len(result.train_ids)}; "
        f"errors baseline {result.baseline.errors}, candidate {result.candidate.errors}; "
        f"p50 latency {1000 * result.baseline.latency_p50_s:.0f} -> {1000 * result.candidate.latency_p50_s:.0f} ms; "
        f"tokens/example {result.baseline.total_tokens / result.baseline.n:.0f} -> "
        f"{result.candidate.total_tokens / result.candidate.n:.0f}; compile LM calls {result.compile_lm_calls}; "
        f"gate ({MARGIN * 100:.0f} points): {verdict}"
    )
    return side, detail


def run_anchor(rt: Runtime, args: argparse.Namespace) -> Side:
    split = load_dataset(DATA).split(heldout_fraction=args.heldout, seed=args.seed)
    train, held = split.train.examples(), split.heldout.examples()
    program = FactQA()
    with dspy.context(lm=rt.lm, adapter=rt.adapter):
        evaluator = dspy.Evaluate(devset=held, metric=contains, num_threads=1, max_errors=len(held) + 1)
        t0 = time.perf_counter()
        base = evaluator(program)
        t1 = time.perf_counter()
        compiled = dspy.BootstrapFewShot(
            metric=contains,
            max_bootstrapped_demos=args.max_demos,
            max_labeled_demos=args.max_demos,
            max_rounds=1,
            max_errors=len(train) + 1,
        ).compile(program.deepcopy(), trainset=train)
        t2 = time.perf_counter()
        cand = evaluator(compiled)
        t3 = time.perf_counter()
    return Side(
        name="plain DSPy (anchor)",
        baseline=base.score / 100,
        candidate=cand.score / 100,
        demos=demo_count(compiled),
        baseline_eval_s=t1 - t0,
        compile_s=t2 - t1,
        candidate_eval_s=t3 - t2,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--heldout", type=float, default=0.4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-demos", type=int, default=4)
    parser.add_argument("--quick", action="store_true", help="2 demos")
    args = parser.parse_args()
    if args.quick:
        args.max_demos = 2
    logging.getLogger("dspy").setLevel(logging.WARNING)
    console = Console(width=150)
    settings = Settings(lm=LMSettings(model="local", cache=False), tracing=TracingSettings(enabled=False))
    with Runtime(settings) as rt:
        t0 = time.perf_counter()
        model = rt.lm.model
        console.print(f"model {model} loaded in {time.perf_counter() - t0:.1f} s", highlight=False)
        anchor = run_anchor(rt, args)
        ours, detail = run_geode(rt, args)
    table = Table(title=f"bootstrap recompilation of geode.examples.qa on {model}, held-out 'contains'")
    for column in (
        "side",
        "baseline",
        "candidate",
        "delta",
        "demos",
        "eval base",
        "compile",
        "eval cand",
        "total",
    ):
        table.add_column(column, justify="left" if column == "side" else "right")
    for side in (ours, anchor):
        table.add_row(
            side.name,
            f"{100 * side.baseline:.1f}%",
            f"{100 * side.candidate:.1f}%",
            f"{100 * (side.candidate - side.baseline):+.1f}",
            str(side.demos),
            f"{side.baseline_eval_s:.1f} s",
            f"{side.compile_s:.1f} s",
            f"{side.candidate_eval_s:.1f} s",
            f"{side.total_s:.1f} s",
        )
    console.print(table)
    console.print(detail, highlight=False)
    overhead = ours.total_s / anchor.total_s - 1 if anchor.total_s else 0.0
    console.print(f"geode vs plain DSPy wall time: {overhead * 100:+.1f}%", highlight=False)


if __name__ == "__main__":
    main()
