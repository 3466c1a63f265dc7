"""A process that forks after building its runtime (preloaded workers): plan row T13.

The test runs the scenario in a fresh interpreter (so pytest's own threads are not forked) and
collects its spans in this process.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from .conftest import Reply, ScriptedHTTP

pytestmark = pytest.mark.reliability

_WORKERS = 4

# What gunicorn --preload (or uvicorn's workers after an import-time app) does: build the runtime,
# use it, fork, and let every worker serve. The parent keeps a keep-alive connection to the collector
# and has spans still queued at the fork, the two things a naive child would share or send twice.
_SCENARIO = textwrap.dedent(
    """
    import json, os, sys, time, traceback
    import dspy
    from geode.runtime.runtime import Runtime
    from geode.runtime.settings import Settings, TracingSettings
    from geode.testing import ScriptedLM

    endpoint, home, workers = sys.argv[1], sys.argv[2], int(sys.argv[3])
    lm = ScriptedLM(lambda messages: {"answer": "ok"})
    tracing = TracingSettings(endpoint=endpoint, export_timeout_s=2.0)
    runtime = Runtime(lm=lm, settings=Settings(home=home, tracing=tracing))
    program = dspy.Predict("question -> answer")
    runtime.run(program, question="parent-before-fork")
    assert runtime.tracer_provider.force_flush(5000)
    runtime.run(program, question="parent-queued-at-fork")  # queued, not yet exported
    children = []
    for n in range(workers):
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                for turn in range(3):
                    runtime.run(program, question=f"child-{n}")
                stats = runtime.export_pipeline.stats
                runtime.close()
                code = 0 if stats.queued == 3 * 2 else 4  # 2 spans per run, none inherited
            except BaseException:
                traceback.print_exc()
                code = 3
            os._exit(code)
        children.append(pid)
    deadline = time.monotonic() + 20
    codes = {}
    while len(codes) < len(children) and time.monotonic() < deadline:
        for pid in children:
            if pid not in codes:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    codes[pid] = os.waitstatus_to_exitcode(status)
        time.sleep(0.02)
    hung = [pid for pid in children if pid not in codes]
    for pid in hung:
        os.kill(pid, 9)
    runtime.run(program, question="parent-after-fork")
    runtime.close()
    print(json.dumps({"codes": sorted(codes.values()), "hung": len(hung)}))
    """
)


def _questions(body: bytes) -> list[str]:
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    found: list[str] = []
    for resource_spans in request.resource_spans:
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                if span.parent_span_id:
                    continue  # count each run once, by its root span
                attributes = {kv.key: kv.value.string_value for kv in span.attributes}
                value = attributes.get("input.value", "")
                found.append(json.loads(value).get("question", "?") if value.startswith("{") else "?")
    return found


def test_t13_forked_workers_each_export_their_own_spans_without_deadlock(
    tmp_path: Path, http_server: Any
) -> None:
    """Injects: a process builds a runtime with tracing to a collector, exports through it (a
    keep-alive connection open), queues more spans, then forks 4 workers, as a preloading server
    does; each worker runs 3 traced programs and closes its runtime.
    Must hold: no worker hangs (bounded wait: 20 s in the scenario, 60 s here); every worker's runs
    arrive at the collector; the parent's spans queued at the fork arrive once, not once per worker;
    the parent still exports after the fork; no worker exports over the parent's pooled connection
    (the collector answers HTTP/1.1 keep-alive)."""
    collector = http_server(lambda path, body: Reply(200, b""), keep_alive=True)
    assert isinstance(collector, ScriptedHTTP)
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", _SCENARIO, collector.url, str(tmp_path / "home"), str(_WORKERS)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    elapsed = time.perf_counter() - started
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    runs = Counter(q for _, body in collector.requests for q in _questions(body))
    connections: dict[tuple[str, int], set[str]] = {}
    for peer, (_, body) in zip(collector.peers, collector.requests, strict=True):
        connections.setdefault(peer, set()).update(q.split("-")[0] for q in _questions(body))
    print(f"\n[figure] T13: parent + {_WORKERS} forked workers in {elapsed:.1f} s: worker exit codes "
          f"{result['codes']}, hung {result['hung']}; runs received at the collector: {dict(sorted(runs.items()))} "
          f"over {len(collector.requests)} exports")  # fmt: skip
    assert result == {"codes": [0] * _WORKERS, "hung": 0}, (result, done.stderr[-3000:])
    expected = {
        "parent-before-fork": 1,
        "parent-queued-at-fork": 1,
        "parent-after-fork": 1,
        **{f"child-{n}": 3 for n in range(_WORKERS)},
    }
    assert dict(runs) == expected
    # No keep-alive connection carries both the parent's and a worker's exports (one socket, two writers).
    shared = [peer for peer, who in connections.items() if {"parent", "child"} <= who]
    assert not shared, connections
