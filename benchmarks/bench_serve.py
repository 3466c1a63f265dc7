"""Load test of `geode serve`'s app against a bare FastAPI endpoint running the same DSPy program.

Each server runs in its own process on loopback; this process is the load generator (httpx, asyncio).
The program is a ``dspy.Predict("question -> answer")`` on ScriptedLM (no model time, so the figures
are the serving overhead). The servers, measured in the same run (the first four by default):

- ``bare``: FastAPI + uvicorn, one endpoint awaiting ``program.acall`` under ``dspy.context``. It does
  the request work Geode's server does for this request: Geode serves here without API keys on
  loopback, so its auth check names the caller by the client's address (no rate limit, no token
  budget), and so does the bare endpoint; the request sends no session, so neither reads or writes
  one;
- ``bare, traced``: the bare endpoint with its program under Geode's tracing (``Runtime.batch``),
  exported to the same collector stub: the program's spans and nothing of Geode's serving. It is the
  floor of the 1.25x target: no server that traces the program with Geode can use less CPU than it;
- ``geode``: :func:`geode.runtime.serving.create_app`, tracing on (spans exported over OTLP/HTTP to a
  collector stub in a third process that answers 200);
- ``geode, Phoenix down``: the same, exporting to a refused port;
- ``geode, no state DB`` (``--servers`` picks it): tracing on, with the served-run index and sessions
  of the state database switched off (this process's memory only, as before the shared state), to
  price the state database on a request;
- ``geode, run index per request`` (``--servers``): the run index written inside each request, one
  transaction each, as before the index was batched off the request path;
- ``geode, PostgreSQL state`` (``--servers``): tracing on, the state database on a local PostgreSQL
  (started here from Debian's binaries like the test tier, ``fsync=off``) instead of SQLite.

For each: throughput, p50/p99 latency and the server's CPU time per request (every thread, the
span export worker included) at 1, 8 and 64 concurrent clients, measured in interleaved rounds, then
server RSS over 20,000 requests. The run ends with the targets' verdicts (issue 19): Geode's CPU per
request at most 1.25x the bare endpoint's at 1 and 8 clients with export on, and its memory growth
at most 5 MB per 5,000 requests after the first quarter of the soak. Failed requests are reported by kind (status and error code, wrong
answer, or the client's exception), and each server's output is kept in a log file for tracebacks.
The machine's load average is printed with the figures: other jobs on a shared machine move them.

Run: ``.venv/bin/python benchmarks/bench_serve.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

# A sibling module (this folder is on sys.path when a benchmark runs as a script).
from _serve_servers import serve_bare, serve_geode, serve_sink
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

HERE = Path(__file__).resolve()
REPO = HERE.parents[1]


# -- the load generator ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    name: str
    url: str
    process: subprocess.Popen[bytes]
    log: Path
    """The server's stdout and stderr (a failed request's traceback lands here)."""

    @property
    def rss_mb(self) -> float:
        return psutil.Process(self.process.pid).memory_info().rss / 2**20

    @property
    def cpu_s(self) -> float:
        """CPU time the server process has used so far, every thread included."""
        times = psutil.Process(self.process.pid).cpu_times()
        return times.user + times.system

    @property
    def loop_cpu_s(self) -> float:
        """CPU time of the server's main thread so far: uvicorn's event loop, where requests are handled."""
        for thread in psutil.Process(self.process.pid).threads():
            if thread.id == self.process.pid:
                return thread.user_time + thread.system_time
        return 0.0


def start(name: str, *args: str, logs: Path) -> Server:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "NO_PROXY": "127.0.0.1,localhost"}
    log = logs / f"{name.split()[0]}-{port}.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, str(HERE), "--serve", *args, "--port", str(port)],
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    server = Server(name, f"http://127.0.0.1:{port}", process, log)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{name} exited with {process.returncode}")
        try:
            if httpx.get(f"{server.url}/ready", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"{name} did not start")


@dataclass
class Run:
    latencies_ms: list[float] = field(default_factory=list[float])
    errors: int = 0
    seconds: float = 0.0
    failures: Counter[str] = field(default_factory=Counter[str])
    """What each failed request was: ``HTTP <status> <error code>``, a wrong answer, or the exception."""

    def fail(self, what: str) -> None:
        self.errors += 1
        self.failures[what] += 1

    @property
    def throughput(self) -> float:
        return len(self.latencies_ms) / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def _error_code(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return response.text[:80]


async def load(url: str, concurrency: int, total: int, *, offset: int = 0) -> Run:
    run = Run()
    counter = iter(range(total))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:

        async def worker() -> None:
            for n in counter:
                started = time.perf_counter()
                try:
                    response = await client.post("/programs/qa", json={"question": f"q{offset + n}"})
                except httpx.TransportError as err:
                    run.fail(f"{type(err).__name__} after {time.perf_counter() - started:.1f} s")
                    continue
                elapsed = (time.perf_counter() - started) * 1000
                if response.status_code != 200:
                    run.fail(f"HTTP {response.status_code} {_error_code(response)}")
                elif response.json()["outputs"]["answer"] != f"echo: q{offset + n}":
                    run.fail("wrong answer")
                else:
                    run.latencies_ms.append(elapsed)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        run.seconds = time.perf_counter() - started
    return run


@dataclass
class Level:
    """One server at one concurrency level, over all rounds."""

    run: Run = field(default_factory=Run)
    cpu_s: float = 0.0
    loop_cpu_s: float = 0.0
    requests: int = 0

    def add(self, run: Run, cpu_s: float, requests: int, loop_cpu_s: float = 0.0) -> None:
        self.run.latencies_ms += run.latencies_ms
        self.run.errors += run.errors
        self.run.failures.update(run.failures)
        self.run.seconds += run.seconds
        self.cpu_s += cpu_s
        self.loop_cpu_s += loop_cpu_s
        self.requests += requests

    def row(self) -> dict[str, Any]:
        return {
            "p50_ms": self.run.pct(0.50),
            "p99_ms": self.run.pct(0.99),
            "rps": self.run.throughput,
            "cpu_ms_per_request": 1000 * self.cpu_s / max(self.requests, 1),
            # The event loop's thread alone; the rest is the other threads (DSPy's worker threads
            # for the LM call, and Geode's span export and run index writers).
            "loop_cpu_ms_per_request": 1000 * self.loop_cpu_s / max(self.requests, 1),
            "errors": self.run.errors,
            "failures": dict(self.run.failures),
        }


SERVERS = {
    "bare": "bare FastAPI",
    "traced": "bare FastAPI, traced",
    "geode": "geode (tracing on)",
    "down": "geode (Phoenix down)",
    "nostate": "geode (no state DB)",
    "sync": "geode (run index per request)",
    "pg": "geode (PostgreSQL state)",
}


def measure(
    console: Console, *, quick: bool, rounds: int, which: list[str], soak_on: bool = True
) -> tuple[dict[str, dict[str, Any]], int]:
    with contextlib.ExitStack() as stack:
        pg = stack.enter_context(_postgres()) if "pg" in which else ""
        return _measure(console, quick=quick, rounds=rounds, which=which, soak_on=soak_on, pg=pg)


@contextlib.contextmanager
def _postgres() -> Iterator[str]:
    sys.path.insert(0, str(REPO))
    from tests.integration.postgres_server import running_postgres

    with running_postgres() as url:
        yield url


def _measure(
    console: Console, *, quick: bool, rounds: int, which: list[str], soak_on: bool, pg: str
) -> tuple[dict[str, dict[str, Any]], int]:
    # Enough requests per round that the CPU clock's 10 ms ticks (psutil) stay small per request:
    # 400 a round at 1 client is +-25 us a request per round, against the 1.25x target's 0.2 ms.
    per_level = {1: 300, 8: 600, 64: 1280} if quick else {1: 2400, 8: 3600, 64: 1920}
    soak = 2_000 if quick else 20_000
    home = Path(tempfile.mkdtemp(prefix="geode-bench-"))
    logs = home / "logs"
    logs.mkdir()
    sink = start("sink", "sink", logs=logs)
    down = f"http://127.0.0.1:{free_port()}"
    commands = {
        "bare": ["bare"],
        "traced": ["bare", "--endpoint", sink.url, "--home", str(home / "traced")],
        "geode": ["geode", "--endpoint", sink.url, "--home", str(home / "on")],
        "down": ["geode", "--endpoint", down, "--home", str(home / "down")],
        "nostate": ["geode", "--endpoint", sink.url, "--home", str(home / "nostate"), "--state", "off"],
        "sync": ["geode", "--endpoint", sink.url, "--home", str(home / "sync"), "--state", "sync"],
        "pg": ["geode", "--endpoint", sink.url, "--home", str(home / "pg"), "--state-url", pg],
    }
    servers = [start(SERVERS[key], *commands[key], logs=logs) for key in which]
    results: dict[str, dict[str, Any]] = {s.name: {"levels": {}, "log": str(s.log)} for s in servers}
    try:
        for server in servers:  # warm up: imports, first LM call, connection pools
            asyncio.run(load(server.url, 8, 200, offset=10_000_000))
        with Progress(console=console) as progress:
            task = progress.add_task("latency and throughput", total=len(per_level) * rounds * len(servers))
            for level, total in per_level.items():
                levels = {server.name: Level() for server in servers}
                for round_ in range(rounds):
                    # Interleaved in short rounds, rotating the order, so bursts of load from other
                    # jobs on the machine hit every server alike.
                    turn = round_ % len(servers)
                    for server in servers[turn:] + servers[:turn]:
                        before, loop_before = server.cpu_s, server.loop_cpu_s
                        count = total // rounds
                        run = asyncio.run(load(server.url, level, count, offset=round_ * 1_000_000))
                        # The export worker sends every 0.5 s: its CPU for this run's spans counts too.
                        time.sleep(0.6)
                        levels[server.name].add(
                            run, server.cpu_s - before, count, server.loop_cpu_s - loop_before
                        )
                        progress.advance(task)
                for server in servers:
                    row = results[server.name]["levels"][level] = levels[server.name].row()
                    # Figures as they come, so an interrupted run still reports what it measured.
                    progress.console.print(
                        f"{server.name}: {level} clients, {row['rps']:.0f} req/s, p50 {row['p50_ms']:.1f} ms, "
                        f"p99 {row['p99_ms']:.1f} ms, CPU {row['cpu_ms_per_request']:.2f} ms/request, "
                        f"{row['errors']} errors {row['failures'] or ''}",
                        soft_wrap=True,
                    )
            task = progress.add_task(f"memory over {soak:,} requests", total=len(servers) * 4)
            for server in servers if soak_on else []:
                # The bare endpoint's memory is a reference; the soak that matters is Geode's.
                count = (soak if server.name.startswith("geode") else soak // 4) // 4
                samples = [server.rss_mb]
                failures: Counter[str] = Counter()
                for quarter in range(4):
                    run = asyncio.run(load(server.url, 32, count, offset=20_000_000 + quarter * soak))
                    failures.update(run.failures)
                    samples.append(server.rss_mb)
                    progress.console.print(
                        f"{server.name}: RSS {samples[-1]:.0f} MB after {(quarter + 1) * count:,}"
                    )
                    progress.advance(task)
                results[server.name]["rss_mb"] = samples
                results[server.name]["soak_errors"] = sum(failures.values())
                results[server.name]["soak_failures"] = dict(failures)
        time.sleep(1.0)  # the last export batch
        for server in servers:
            results[server.name]["spans_dropped"] = _spans_dropped(server.url)
        results.get("geode (tracing on)", {})["spans_received"] = httpx.get(f"{sink.url}/count").json()[
            "spans"
        ]
    finally:
        for server in [*servers, sink]:
            server.process.terminate()
        for server in [*servers, sink]:
            try:
                server.process.wait(30)
            except subprocess.TimeoutExpired:
                server.process.kill()
    for server in servers:
        text = server.log.read_text(errors="replace")
        results[server.name]["log_tracebacks"] = text.count("Traceback")
    return results, soak


def _spans_dropped(url: str) -> dict[str, float]:
    """``geode_spans_dropped_total`` by reason, from the server's Prometheus endpoint."""
    dropped: dict[str, float] = {}
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith("geode_spans_dropped_total{"):
            labels, _, value = line.partition("} ")
            dropped[labels.split('reason="', 1)[1].rstrip('"')] = float(value)
    return dropped


def report(console: Console, results: dict[str, dict[str, Any]], soak: int) -> None:
    bare = results["bare FastAPI"]["levels"]
    table = Table(title="Serving a Predict program on ScriptedLM (loopback, client in a separate process)")
    columns = (
        "server",
        "clients",
        "req/s",
        "p50 ms",
        "p99 ms",
        "p50 vs bare",
        "CPU ms/req",
        "of it, loop thread",
        "errors",
    )
    for column in columns:
        table.add_column(column, justify="left" if column == "server" else "right")
    for name, data in results.items():
        for level, row in data["levels"].items():
            ratio = row["p50_ms"] / bare[level]["p50_ms"]
            table.add_row(
                name,
                str(level),
                f"{row['rps']:.0f}",
                f"{row['p50_ms']:.1f}",
                f"{row['p99_ms']:.1f}",
                f"{ratio:.2f}x",
                f"{row['cpu_ms_per_request']:.2f}",
                f"{row.get('loop_cpu_ms_per_request', 0.0):.2f}",
                str(row["errors"]),
            )
    console.print(table)
    console.print(
        "CPU ms/req = the server process's CPU time (every thread) over the requests it answered; "
        "loop thread = its main thread alone (uvicorn's event loop: routing, the program, Geode's "
        "request work and spans); the rest is DSPy's worker threads and Geode's export and run index writers"
    )
    _cpu_verdicts(console, results)
    if not all("rss_mb" in data for data in results.values()):
        console.print("(no memory soak: --no-soak)")
        return
    memory = Table(title=f"Server RSS (MB) over {soak:,} requests (bare: {soak // 4:,}), 32 clients")
    for column in ("server", "start", "25%", "50%", "75%", "100%", "growth", "errors"):
        memory.add_column(column, justify="left" if column == "server" else "right")
    for name, data in results.items():
        rss = data["rss_mb"]
        memory.add_row(name, *(f"{v:.0f}" for v in rss), f"{rss[-1] - rss[1]:+.0f}", str(data["soak_errors"]))
    console.print(memory)
    console.print("growth = RSS at the end minus after the first quarter (allocator warm-up excluded)")
    _memory_verdict(console, results, soak)
    if "geode (tracing on)" in results and "geode (Phoenix down)" in results:
        on = results["geode (tracing on)"]
        console.print(
            f"spans: the collector received {on['spans_received']:,} from the servers exporting to it "
            f"(dropped there: {on['spans_dropped'] or 'none'}); "
            f"'geode (Phoenix down)' dropped {results['geode (Phoenix down)']['spans_dropped']}"
        )
    for name, data in results.items():
        failures = Counter[str]()
        for row in data["levels"].values():
            failures.update(row["failures"])
        failures.update(data.get("soak_failures", {}))
        if failures or data["log_tracebacks"]:
            console.print(
                f"{name}: failed requests {dict(failures)}; {data['log_tracebacks']} tracebacks in {data['log']}"
            )


CPU_TARGET = 1.25
"""Issue 19: Geode's CPU per request at most this many times the bare endpoint's, at 1 and 8 clients."""
MEMORY_TARGET_MB = 5.0
"""Issue 19: Geode's RSS growth per 5,000 requests after warm-up, at most."""
GEODE = "geode (tracing on)"
TRACED = "bare FastAPI, traced"


def _cpu_verdicts(console: Console, results: dict[str, dict[str, Any]]) -> None:
    if GEODE not in results:
        return
    bare, geode = results["bare FastAPI"]["levels"], results[GEODE]["levels"]
    for level in (1, 8):
        if level not in geode or level not in bare:
            continue
        ours, theirs = geode[level]["cpu_ms_per_request"], bare[level]["cpu_ms_per_request"]
        ratio = ours / theirs if theirs else float("inf")
        console.print(
            f"TARGET serving CPU per request <= {CPU_TARGET}x bare (clients {level}): "
            f"{ours:.2f} ms vs {theirs:.2f} ms = {ratio:.2f}x -> {'MET' if ratio <= CPU_TARGET else 'NOT MET'}",
            soft_wrap=True,  # one line whatever the terminal's width
        )
        traced = results.get(TRACED, {}).get("levels", {}).get(level)
        if traced and theirs:
            floor = traced["cpu_ms_per_request"]
            console.print(
                f"  floor (clients {level}): tracing the program alone, {TRACED!r}, {floor:.2f} ms = "
                f"{floor / theirs:.2f}x bare; Geode's serving work on top of it {ours - floor:+.2f} ms "
                f"= {ours / floor:.2f}x the floor",
                soft_wrap=True,
            )


def _memory_verdict(console: Console, results: dict[str, dict[str, Any]], soak: int) -> None:
    rss = results.get(GEODE, {}).get("rss_mb")
    if not rss:
        return
    # Growth after the first quarter (warm-up) over the last three quarters of the soak.
    measured = 3 * (soak // 4)
    per_5000 = (rss[-1] - rss[1]) * 5000 / measured
    console.print(
        f"TARGET memory growth <= {MEMORY_TARGET_MB:g} MB per 5,000 requests after warm-up ({GEODE}, "
        f"{soak:,} requests): {rss[-1] - rss[1]:+.1f} MB over {measured:,} = {per_5000:+.1f} MB per 5,000 "
        f"-> {'MET' if per_5000 <= MEMORY_TARGET_MB else 'NOT MET'}",
        soft_wrap=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description="Load test of the served app against bare FastAPI.")
    parser.add_argument("--serve", choices=["bare", "geode", "sink"])
    parser.add_argument("--port", type=int)
    parser.add_argument("--endpoint", default="")
    parser.add_argument("--home", default="")
    parser.add_argument("--state", choices=["on", "off", "sync"], default="on", help=argparse.SUPPRESS)
    parser.add_argument("--state-url", default="", help=argparse.SUPPRESS)
    parser.add_argument(
        "--servers",
        default="bare,traced,geode,down",
        help=f"Comma-separated servers to measure, of: {', '.join(f'{k} ({v})' for k, v in SERVERS.items())}.",
    )
    parser.add_argument("--no-soak", action="store_true", help="Skip the memory soak.")
    parser.add_argument("--quick", action="store_true", help="Fewer requests: a smoke run.")
    parser.add_argument("--rounds", type=int, default=6, help="Interleaved rounds per concurrency level.")
    parser.add_argument("--json", type=Path, help="Also write the figures to this JSON file.")
    args = parser.parse_args()
    if args.serve == "bare":
        return serve_bare(args.port, args.endpoint, args.home)
    if args.serve == "geode":
        return serve_geode(args.port, args.endpoint, args.home, state=args.state, state_url=args.state_url)
    if args.serve == "sink":
        return serve_sink(args.port)

    console = Console()
    load_before = os.getloadavg()
    which = [key.strip() for key in args.servers.split(",") if key.strip()]
    unknown = [key for key in which if key not in SERVERS]
    if unknown or "bare" not in which:
        parser.error(f"--servers: unknown {unknown}" if unknown else "--servers must include bare")
    results, soak = measure(
        console, quick=args.quick, rounds=max(1, args.rounds), which=which, soak_on=not args.no_soak
    )
    load_after = os.getloadavg()
    report(console, results, soak)
    # Other jobs on the machine move every figure: say how busy it was.
    console.print(
        f"load average (1, 5, 15 min) at start {', '.join(f'{x:.1f}' for x in load_before)}; "
        f"at end {', '.join(f'{x:.1f}' for x in load_after)}; {os.cpu_count()} CPUs"
    )
    if args.json:
        payload = {"results": results, "load_before": load_before, "load_after": load_after}
        args.json.write_text(json.dumps(payload, indent=2, default=str))


if __name__ == "__main__":
    main()
