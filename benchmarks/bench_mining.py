"""Mining throughput: spans/s from the runtime's OTLP-JSON file and from a real Phoenix, vs the raw fetch alone.

The traces are real runs: a two-predictor program (``Predict`` then ``ChainOfThought``, 6 spans per run)
on a scripted LM, traced by a Geode ``Runtime`` into its OTLP-JSON file. Questions are all distinct, so
de-duplication keeps every run. The same file is then replayed into a local Phoenix over OTLP/HTTP
(protobuf), backing off whenever Phoenix answers 503 (its ingest queue is full: exporting at the runtime's
pace lost half the spans that way). Phoenix ingests slowly on a small machine (about 125 spans/s), so the
spans are generated and loaded once and cached under ``benchmarks/data/mining/`` (git-ignored): the OTLP
file, and the Phoenix working directory (its SQLite database). Later runs reuse both.

Sides, in the same process, on the same spans:

* file, geode: ``geode.evals.mining.mine(OtlpFileTraceSource(file), program)`` (parse, group into traces,
  examine, build records, de-duplicate exact and near, per-predictor sets, health);
* file, read only: ``OtlpFileTraceSource(file).records()`` (parse the OTLP-JSON into span records);
* Phoenix, geode: ``mine(PhoenixTraceSource(url, project), program)`` (page root spans, fetch whole
  traces, read annotations, then as above);
* Phoenix, anchor: ``phoenix.client.Client().spans.get_spans_dataframe(project_identifier=...)``, the raw
  fetch of every span of the project and nothing else.

    .venv/bin/python benchmarks/bench_mining.py                 # 9,000 runs = 54,000 spans
    .venv/bin/python benchmarks/bench_mining.py --runs 1000     # quick (its own cache)
    .venv/bin/python benchmarks/bench_mining.py --phoenix-url http://127.0.0.1:6006   # a running Phoenix
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

import geode
from geode.evals.mining import mine
from geode.runtime.phoenix import PhoenixServer, find_free_port
from geode.runtime.settings import PhoenixSettings, Settings, TracingSettings
from geode.testing import DraftThenAnswer, ScriptedLM
from geode.traces.sources import OtlpFileTraceSource, PhoenixTraceSource

CACHE = Path(__file__).parent / "data" / "mining"
PROGRAM = "bench-mining-qa"
SPANS_PER_RUN = 6
console = Console()


_SUBJECTS = ["invoice", "refund", "password", "shipment", "subscription", "warranty", "coupon", "account"]
_VERBS = ["cancel", "change", "track", "renew", "dispute", "transfer", "download", "verify"]


def _question(i: int) -> str:
    # Distinct wording per run (no exact or near duplicates), like real traffic with varied phrasing.
    return (
        f"Customer {i} asks how to {_VERBS[i % 8]} the {_SUBJECTS[(i // 8) % 8]} from order {i * 7919 % 100003} "
        f"placed on day {i % 365} in region {i % 17}"
    )


def _model(messages: list[dict[str, str]]) -> dict[str, str]:
    if "reasoning" not in messages[0]["content"]:
        return {"draft": "Look up the order, then follow the help page."}
    return {
        "reasoning": "The help page covers this.",
        "answer": "Open Settings > Orders and follow the steps.",
    }


def _project_spans(url: str, project: str) -> int:
    """Spans Phoenix has ingested for the project (its GraphQL record count: one cheap query)."""
    query = "{ projects { edges { node { name recordCount } } } }"
    response = httpx.post(f"{url}/graphql", json={"query": query}, timeout=120)
    response.raise_for_status()
    for edge in response.json()["data"]["projects"]["edges"]:
        if edge["node"]["name"] == project:
            return int(edge["node"]["recordCount"])
    return 0


def _bar(label: str) -> Progress:
    return Progress(
        TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    )


def _generate(runs: int, file: Path) -> None:
    """Run the program ``runs`` times with spans going to the OTLP-JSON file only."""
    settings = Settings(
        home=CACHE / "home",
        tracing=TracingSettings(otlp_file=file, queue_size=200_000),
        phoenix=PhoenixSettings(port=find_free_port()),  # nothing listens there: no export to a local Phoenix
    )
    file.unlink(missing_ok=True)
    with geode.Runtime(settings, lm=ScriptedLM(_model)) as rt:
        with _bar("generating runs") as bar:
            task = bar.add_task("runs", total=runs)
            for i in range(runs):
                rt.run(PROGRAM, question=_question(i))
                bar.advance(task)


def _to_protobuf(line: str, project: str) -> tuple[bytes, int]:
    """One OTLP-JSON export request as OTLP protobuf (hex ids become bytes), filed under ``project``."""
    from google.protobuf import json_format
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    request = json.loads(line)
    spans = 0
    for resource_spans in request.get("resourceSpans", []):
        attributes = resource_spans.setdefault("resource", {}).setdefault("attributes", [])
        attributes[:] = [a for a in attributes if a.get("key") != "openinference.project.name"]
        attributes.append({"key": "openinference.project.name", "value": {"stringValue": project}})
        for scope in resource_spans.get("scopeSpans", []):
            for span in scope.get("spans", []):
                spans += 1
                for key in ("traceId", "spanId", "parentSpanId"):
                    if span.get(key):
                        span[key] = base64.b64encode(bytes.fromhex(span[key])).decode()
    return json_format.ParseDict(request, ExportTraceServiceRequest()).SerializeToString(), spans


def _load(url: str, project: str, file: Path, expected: int) -> None:
    """Replay the file into Phoenix over OTLP/HTTP, backing off while Phoenix says it is at capacity (503)."""
    with httpx.Client(base_url=url, timeout=60) as http:
        http.delete(f"v1/projects/{project}")  # a half-loaded project from an interrupted run
        with _bar("sending spans") as bar:
            task = bar.add_task("spans", total=expected)
            for line in file.read_text().splitlines():
                body, spans = _to_protobuf(line, project)
                while True:
                    try:
                        response = http.post(
                            "v1/traces", content=body, headers={"content-type": "application/x-protobuf"}
                        )
                        if response.status_code != 503:
                            response.raise_for_status()
                            break
                    except httpx.TransportError:
                        pass
                    time.sleep(2.0)
                bar.advance(task, spans)


def _wait_ingested(url: str, project: str, expected: int) -> int:
    with _bar("Phoenix ingesting") as bar:
        task = bar.add_task("spans", total=expected)
        seen, still = 0, 0
        while seen < expected:
            time.sleep(10)
            now = _project_spans(url, project)
            still = still + 1 if now == seen else 0
            seen = now
            bar.update(task, completed=seen)
            if still >= 30:  # five minutes without progress: report what arrived
                break
    return seen


def _best(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    times: list[float] = []
    result: Any = None
    for _ in range(repeat):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=9_000, help="Program runs (6 spans each).")
    parser.add_argument("--phoenix-url", help="Use this running Phoenix instead of starting one.")
    parser.add_argument(
        "--repeat", type=int, default=3, help="Timed repetitions per side (best is reported)."
    )
    args = parser.parse_args()
    logging.getLogger("geode").setLevel(logging.ERROR)

    geode.register_program(PROGRAM, DraftThenAnswer)
    CACHE.mkdir(parents=True, exist_ok=True)
    (CACHE / ".gitignore").write_text("*\n")
    project = f"bench-mining-{args.runs}"
    file = CACHE / f"spans-{args.runs}.jsonl"
    expected = args.runs * SPANS_PER_RUN

    server: PhoenixServer | None = None
    url = args.phoenix_url
    if url is None:
        server = PhoenixServer(
            PhoenixSettings(port=find_free_port(), grpc_port=find_free_port(), start_timeout_s=600),
            working_dir=CACHE / "phoenix",
        )
        console.print("starting Phoenix (its database is cached in benchmarks/data/mining/phoenix) ...")
        url = server.start().url
    try:
        if not file.exists():
            _generate(args.runs, file)
        loaded = _project_spans(url, project)
        if 0 < loaded < expected:  # an earlier run loaded it and Phoenix may still be ingesting
            loaded = _wait_ingested(url, project, expected)
        if loaded < expected:
            _load(url, project, file, expected)
            loaded = _wait_ingested(url, project, expected)
        console.print(f"Phoenix {url}, project {project}: {loaded} spans; file {file}")
        _measure(url, project, file, args.repeat, loaded)
    finally:
        if server is not None:
            server.stop()


def _measure(url: str, project: str, file: Path, repeat: int, phoenix_spans: int) -> None:
    file_read_s, records = _best(lambda: OtlpFileTraceSource(file).records(), repeat)
    file_mine_s, file_result = _best(lambda: mine(OtlpFileTraceSource(file), PROGRAM), repeat)
    console.print("importing phoenix.client (not timed) ...")
    from phoenix.client import Client

    client = Client(base_url=url)
    raw_s, frame = _best(
        lambda: client.spans.get_spans_dataframe(project_identifier=project, limit=1_000_000, timeout=600),
        repeat,
    )

    def from_phoenix() -> Any:
        with PhoenixTraceSource(url, project, timeout_s=600) as source:
            return mine(source, PROGRAM)

    px_mine_s, px_result = _best(from_phoenix, repeat)
    stages = px_result.summary()
    table = Table(
        title=f"Mining {len(records):,} spans ({file_result.traces_read:,} runs)", title_justify="left"
    )
    for column in ("side", "what", "spans", "seconds", "spans/s", "examples"):
        table.add_column(column, justify="left" if column in ("side", "what") else "right")
    rows = [
        ("file", "geode mine", file_result.spans_read, file_mine_s, len(file_result.dataset)),
        ("file", "read + parse only", len(records), file_read_s, None),
        ("Phoenix", "geode mine", px_result.spans_read, px_mine_s, len(px_result.dataset)),
        ("Phoenix", "anchor: get_spans_dataframe", len(frame), raw_s, None),
    ]
    for side, what, spans, seconds, examples in rows:
        table.add_row(
            side,
            what,
            f"{spans:,}",
            f"{seconds:.2f}",
            f"{spans / seconds:,.0f}",
            "" if examples is None else f"{examples:,}",
        )
    console.print(table)
    console.print(
        f"Phoenix: geode mine took {px_mine_s / raw_s:.2f}x the raw dataframe fetch; "
        f"file: mining took {file_mine_s / file_read_s:.2f}x reading the spans. "
        f"Phoenix held {phoenix_spans:,} spans; mined {stages['records']:,} examples, "
        f"skipped {stages['skipped']}, duplicates {stages['exact_duplicates']}+{stages['near_duplicates']}, "
        f"predictor sets {stages['predictors']}. Best of {repeat} per side."
    )


if __name__ == "__main__":
    main()
