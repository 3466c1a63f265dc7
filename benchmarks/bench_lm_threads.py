"""Embedded LM latency by llama.cpp thread count, on the machine as it is and beside a CPU-bound process.

Do fewer llama.cpp threads than cores help when other processes load the machine (ggml waits for all of
its threads at every step, so a thread waiting for a time slice stalls the others), or hurt (Linux shares
a busy CPU per thread, so fewer threads get less of it)? This measures it in one process with the same
model and prompt: ``LocalLM(threads=1)`` against ``LocalLM()`` (the default: every core this process may
use), alternating call by call,

1. on the machine as it is (``as is``: whatever else runs on it, reported as the load average);
2. with a CPU-bound process (a Python busy loop) beside it, started ``--settle`` seconds before.

A version of ``LocalLM`` that chose the thread count per call from the 1-minute load average (usable
cores minus the load of other processes) picked 1 thread on the 2-core development machine at load 5-6;
this benchmark found that 1.4-1.7x slower than 2, so the default stays at every usable core
(``docs/benchmarks.md``).

Each call is a real DSPy JSONAdapter prompt (~300 tokens) with the KV cache cleared first, greedy,
``--max-tokens`` new tokens. Run it under the shared CPU lock:

    flock /tmp/geode-cpu.lock .venv/bin/python benchmarks/bench_lm_threads.py            # 5 calls per side
    flock /tmp/geode-cpu.lock .venv/bin/python benchmarks/bench_lm_threads.py --calls 2  # quicker
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import dspy
from dspy.lm15 import Config, Message, Request
from rich.console import Console
from rich.table import Table

from geode.runtime.lm._threads import usable_cores
from geode.runtime.lm.local import LocalLM

BUSY_LOOP = "while True:\n    pass\n"
SCENARIOS = ("as is", "busy process beside")


class ContextQA(dspy.Signature):
    """Answer the question using only the context."""

    context: str = dspy.InputField()
    question: str = dspy.InputField()
    answer: str = dspy.OutputField()


def _request(lm: LocalLM, max_tokens: int) -> Request:
    facts = (
        "Paris is the capital of France. The Seine flows through Paris. "
        "The Eiffel Tower was completed in 1889 and is 330 metres tall. " * 3
    )
    messages = dspy.JSONAdapter().format(
        ContextQA, demos=[], inputs={"context": facts, "question": "How tall is the Eiffel Tower?"}
    )
    system = "\n".join(m["content"] for m in messages if m["role"] == "system")
    return Request(
        model=lm.model,
        system=system or None,
        messages=tuple(Message.user(m["content"]) for m in messages if m["role"] == "user"),
        config=Config(max_tokens=max_tokens, temperature=0.0),
    )


@dataclass
class Side:
    name: str
    lm: LocalLM
    seconds: list[float] = field(default_factory=list)
    threads: list[int] = field(default_factory=list)
    prompt_tokens: int = 0

    def call(self, request: Request) -> None:
        with self.lm.loaded.lock:
            self.lm.llama.reset()  # each call pays for its whole prompt
        start = time.perf_counter()
        response = self.lm.llama_engine.complete(request)
        self.seconds.append(time.perf_counter() - start)
        self.threads.append(int(self.lm.llama.n_threads))
        self.prompt_tokens = response.usage.input_tokens or 0


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


@contextmanager
def _busy_neighbour() -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen([sys.executable, "-c", BUSY_LOOP])
    try:
        yield process
    finally:
        process.terminate()
        process.wait(timeout=10)


def _measure(sides: list[Side], request: Request, calls: int) -> None:
    for i in range(calls):
        # A B, B A, ...: load that drifts during the run hits both sides alike.
        for side in sides if i % 2 == 0 else reversed(sides):
            side.call(request)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--calls", type=int, default=5, help="calls per side and scenario")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--settle", type=float, default=5.0, help="seconds the busy process runs first")
    options = parser.parse_args()
    console = Console()
    cores = usable_cores()
    sides_lms = [
        ("1 thread", LocalLM(cache=False, threads=1)),
        (f"{cores} threads (default)", LocalLM(cache=False)),
    ]
    request = _request(sides_lms[1][1], options.max_tokens)
    for _, lm in sides_lms:  # warm-up: first-call allocations, grammar, page cache
        Side("warm-up", lm).call(request)
    console.print(f"usable cores {cores}; load average at start {_load()}")

    rows: list[tuple[str, str, Side]] = []
    for scenario in SCENARIOS:
        sides = [Side(name, lm) for name, lm in sides_lms]
        console.print(f"[bold]{scenario}[/bold]")
        if scenario == SCENARIOS[0]:
            load_start = _load()
            _measure(sides, request, options.calls)
        else:
            with _busy_neighbour():
                time.sleep(options.settle)
                load_start = _load()
                _measure(sides, request, options.calls)
        rows.extend((scenario, f"{load_start} → {_load()}", side) for side in sides)

    table = Table(
        title=f"LocalLM per-call latency, {options.max_tokens} new tokens, cache cleared, n={options.calls}"
    )
    for column in (
        "scenario",
        "load avg (1/5/15 min)",
        "side",
        "threads",
        "median s",
        "min-max s",
        "calls s",
    ):
        table.add_column(column)
    for scenario, load, side in rows:
        table.add_row(
            scenario,
            load,
            side.name,
            ",".join(str(t) for t in sorted(set(side.threads))),
            f"{statistics.median(side.seconds):.2f}",
            f"{min(side.seconds):.2f}-{max(side.seconds):.2f}",
            " ".join(f"{s:.2f}" for s in side.seconds),
        )
    console.print(table)
    console.print(f"prompt tokens per call: {rows[0][2].prompt_tokens}; load average at end {_load()}")
    for scenario in SCENARIOS:
        one, default = (side for s, _, side in rows if s == scenario)
        ratio = statistics.median(one.seconds) / statistics.median(default.seconds)
        console.print(f"{scenario}: 1 thread / {cores} threads, median latency = {ratio:.2f}")


if __name__ == "__main__":
    main()
