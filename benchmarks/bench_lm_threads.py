"""Embedded LM latency with a fixed thread count vs the count chosen from the free cores, idle and loaded.

ggml waits for all of its threads at every step, so when another process holds a core, a llama.cpp
thread that has to wait for a time slice stalls the others. ``LocalLM`` therefore picks its thread
count before each call from the cores it may use and the 1-minute load average of other processes
(``geode.runtime.lm._threads``); ``GEODE_LM_THREADS`` pins it. This measures, in one process with the
same model and prompt, a ``LocalLM`` pinned to all usable cores (the old default, the anchor) against
one that chooses (ours), alternating call by call:

1. as the machine is (``idle``: whatever else runs on it, reported as the load average);
2. with a CPU-bound process beside it (a Python busy loop), once the load average shows it.

Each call is a real DSPy JSONAdapter prompt (~280 tokens) with the KV cache cleared first, greedy,
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
        self.threads.append(self.lm.loaded.threads)
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


def _wait_for_load(adaptive: LocalLM, timeout_s: float, console: Console) -> float:
    """Wait until the chooser sees the neighbour (the load average takes about a minute to rise)."""
    chooser = adaptive.loaded.chooser
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if chooser is not None and chooser.choose() < chooser.cores:
            break
        time.sleep(2.0)
    waited = time.monotonic() - start
    console.print(f"  waited {waited:.0f} s for the load average to show the busy process (load {_load()})")
    return waited


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--calls", type=int, default=5, help="calls per side and scenario")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--settle", type=float, default=90.0, help="max seconds to wait for the load average")
    options = parser.parse_args()
    console = Console()
    cores = usable_cores()
    fixed_lm = LocalLM(cache=False, threads=cores)
    adaptive_lm = LocalLM(cache=False)
    request = _request(adaptive_lm, options.max_tokens)
    console.print(f"usable cores {cores}; load average at start {_load()}")

    rows: list[tuple[str, str, Side]] = []
    for scenario in ("idle", "busy process beside"):
        sides = [
            Side(f"fixed {cores} threads (anchor)", fixed_lm),
            Side("chosen per call (ours)", adaptive_lm),
        ]
        console.print(f"[bold]{scenario}[/bold]")
        if scenario == "idle":
            sides[0].call(request)  # warm-up: first-call allocations, grammar, page cache
            sides[1].call(request)
            sides = [Side(s.name, s.lm) for s in sides]
            load_start = _load()
            _measure(sides, request, options.calls)
        else:
            with _busy_neighbour():
                _wait_for_load(adaptive_lm, options.settle, console)
                load_start = _load()
                _measure(sides, request, options.calls)
        load_end = _load()
        rows.extend((scenario, f"{load_start} → {load_end}", side) for side in sides)

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
    for scenario in ("idle", "busy process beside"):
        fixed, chosen = (side for s, _, side in rows if s == scenario)
        ratio = statistics.median(chosen.seconds) / statistics.median(fixed.seconds)
        console.print(f"{scenario}: chosen / fixed median latency = {ratio:.2f}")


if __name__ == "__main__":
    main()
