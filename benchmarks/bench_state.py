"""What the shared state costs a request: sessions, the served-run index and registry lookups.

Side by side in one process, on the same operations a served request makes:

- ``memory``: the per-replica state before the state database (``MemorySessionStore``, an in-memory
  trace-id map, and the registry's old per-request ``stat`` of ``active.json``);
- ``sqlite``: the embedded default, ``<home>/state.db`` (WAL) on this machine's disk;
- ``postgres``: a local PostgreSQL server over loopback TCP (started here from Debian's ``postgresql``
  package like the test tier does, or ``--postgres-url``).

Per operation: median and p99 wall time (µs) over ``--n`` calls, after a warm-up. ``run record``
is one transaction per run, as a request paid before the index was batched; ``run record, batch of
B (per run)`` is one transaction of B runs divided by B, what :class:`RunRecorder`'s thread pays per
run when B runs are answered within its delay; ``run record, queued`` is what the request itself now
pays. The ``request`` rows add up what a served request does: without a session, record the run (the
queue insert plus the batched write's share at 8 runs per batch; ``memory`` has no write) and check
the active version (cached for ``GEODE_STATE_POLL_S``); with a session, also read its turns and append
one.

Run: ``.venv/bin/python benchmarks/bench_state.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]

TRACE = "0af7651916cd43dd8448eb211c80319c"


def _timed(fn: Callable[[int], Any], n: int, warmup: int) -> tuple[float, float]:
    for i in range(warmup):
        fn(i)
    samples: list[float] = []
    for i in range(n):
        started = time.perf_counter()
        fn(warmup + i)
        samples.append(time.perf_counter() - started)
    samples.sort()
    return statistics.median(samples) * 1e6, samples[min(len(samples) - 1, int(len(samples) * 0.99))] * 1e6


def _memory_ops(folder: Path) -> dict[str, Callable[[int], Any]]:
    from geode.runtime.serving.sessions import MemorySessionStore, Turn

    sessions = MemorySessionStore()
    runs: OrderedDict[str, tuple[str, str, str | None, str]] = OrderedDict()
    pointer = folder / "active.json"
    pointer.write_text("{}")
    for t in range(10):
        sessions.append("key\x1fs0", Turn({"question": f"q{t}"}, {"answer": f"a{t}"}))

    def remember(i: int) -> None:
        runs[f"{i:032x}"] = ("00f067aa0ba902b7", "qa", None, "key")
        while len(runs) > 100_000:
            runs.popitem(last=False)

    return {
        "session read (10 turns)": lambda i: sessions.turns("key\x1fs0"),
        "session append": lambda i: sessions.append(
            f"key\x1fs{i % 50}", Turn({"question": "q"}, {"answer": "a"})
        ),
        "run record": remember,
        "run record, queued": remember,
        "run record, batch of 8 (per run)": lambda i: None,
        "run record, batch of 64 (per run)": lambda i: None,
        "run lookup": lambda i: runs.get(f"{i:032x}"),
        "active version (per request)": lambda i: pointer.stat(),
        "active version (uncached)": lambda i: pointer.stat(),
    }


def _sql_ops(url: str, folder: Path) -> dict[str, Callable[[int], Any]]:
    from geode.runtime.registry import ProgramRegistry
    from geode.runtime.serving.sessions import Turn
    from geode.runtime.state import RunRecorder, ServedRun, SqlRunIndex, SqlState
    from geode.runtime.state.sessions import SqlSessionStore

    state = SqlState(url, schema_name=f"bench_{os.getpid()}")
    sessions = SqlSessionStore(state)
    runs = SqlRunIndex(state)
    cached = ProgramRegistry(folder / "programs", state=state, poll_s=1.0)
    uncached = ProgramRegistry(folder / "programs", state=state, poll_s=0.0)
    cached.promote("qa", cached.save("qa", _program()).version, force=True)
    # A delay no run waits out here: the queue is measured alone, its writes are the batch rows.
    recorder = RunRecorder(runs, delay_s=3600.0, max_batch=10**9)
    for t in range(10):
        sessions.append("key\x1fs0", Turn({"question": f"q{t}"}, {"answer": f"a{t}"}))

    def run(i: int, offset: int = 0) -> ServedRun:
        return ServedRun(f"{offset + i:032x}", "00f067aa0ba902b7", "qa", None, "key")

    def batch(size: int, offset: int) -> Callable[[int], Any]:
        return lambda i: runs.remember_many([run(i * size + k, offset) for k in range(size)])

    return {
        "session read (10 turns)": lambda i: sessions.turns("key\x1fs0"),
        "session append": lambda i: sessions.append(
            f"key\x1fs{i % 50}", Turn({"question": "q"}, {"answer": "a"})
        ),
        "run record": lambda i: runs.remember(run(i)),
        "run record, queued": lambda i: recorder.remember(run(i, 1 << 60)),
        "run record, batch of 8 (per run)": batch(8, 2 << 60),
        "run record, batch of 64 (per run)": batch(64, 3 << 60),
        "run lookup": lambda i: runs.find(f"{i:032x}"),
        "active version (per request)": lambda i: cached.pointer_stamp("qa"),
        "active version (uncached)": lambda i: uncached.pointer_stamp("qa"),
    }


def _program() -> Any:
    import dspy

    module = dspy.Predict("question -> answer")
    module.demos = [dspy.Example(question="q", answer="a").with_inputs("question")]
    return module


@contextlib.contextmanager
def _postgres(url: str | None) -> Iterator[str | None]:
    if url:
        yield url
        return
    sys.path.insert(0, str(REPO))
    from tests.integration.postgres_server import running_postgres, server_binaries

    if server_binaries() is None:
        yield None
        return
    with running_postgres() as started:
        yield started


def main() -> None:
    parser = argparse.ArgumentParser(description="What the shared state costs a request.")
    parser.add_argument("--n", type=int, default=3000, help="timed calls per operation")
    parser.add_argument("--quick", action="store_true", help="300 calls per operation")
    parser.add_argument("--postgres-url", default=None, help="use this PostgreSQL instead of starting one")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here too")
    args = parser.parse_args()
    n = 300 if args.quick else args.n
    warmup = max(50, n // 10)
    load = os.getloadavg()
    results: dict[str, dict[str, tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp, _postgres(args.postgres_url) as pg:
        folder = Path(tmp)
        backends: dict[str, Callable[[], dict[str, Callable[[int], Any]]]] = {
            "memory": lambda: _memory_ops(folder),
            "sqlite": lambda: _sql_ops(f"sqlite:///{folder / 'state.db'}", folder),
        }
        if pg is not None:
            backends["postgres"] = lambda: _sql_ops(pg, folder)
        for name, build in backends.items():
            ops = build()
            results[name] = {}
            for op, fn in ops.items():
                # A batch op is timed over n/B calls of B runs and reported per run.
                size = int(op.split("batch of ")[1].split()[0]) if "batch of" in op else 1
                median, p99 = _timed(fn, max(30, n // size), max(5, warmup // size))
                results[name][op] = (median / size, p99 / size)
    for name, figures in results.items():
        share = figures["run record, batch of 8 (per run)"]
        queued = figures["run record, queued"]
        figures["run record, batched (request + share of a batch of 8)"] = (
            queued[0] + (share[0] if name != "memory" else 0.0),
            queued[1] + (share[1] if name != "memory" else 0.0),
        )
        plain = ("run record, batched (request + share of a batch of 8)", "active version (per request)")
        session = ("session read (10 turns)", "session append", *plain)
        figures["request, no session"] = (
            sum(figures[k][0] for k in plain),
            sum(figures[k][1] for k in plain),
        )
        figures["request with a session"] = (
            sum(figures[k][0] for k in session),
            sum(figures[k][1] for k in session),
        )
    end_load = os.getloadavg()
    table = Table(title=f"state operations, n={n} each (µs: median / p99)")
    table.add_column("operation")
    for name in results:
        table.add_column(name, justify="right")
    for op in next(iter(results.values())):
        table.add_row(op, *(f"{results[b][op][0]:.1f} / {results[b][op][1]:.1f}" for b in results))
    console = Console()
    console.print(table)
    console.print(
        f"load average {load[0]:.1f} at the start, {end_load[0]:.1f} at the end; "
        f"python {sys.version.split()[0]}, {'postgres' if 'postgres' in results else 'no postgres'}"
    )
    if args.json is not None:
        args.json.write_text(
            json.dumps({"n": n, "load": [load[0], end_load[0]], "results": results}, indent=2)
        )


if __name__ == "__main__":
    main()
