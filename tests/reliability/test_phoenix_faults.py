"""Phoenix down, refusing or hanging: requests are unaffected, spans are dropped and counted, shutdown is bounded.

Injects: the collector endpoint of a real `geode serve` process points at a refused port, at a
server answering 503 to everything, or at a black hole that accepts connections and never replies.
Must hold: every request answers 200 well inside the export deadline (5 s: a request that waited on
an export would take at least that long, so the bound of half of it cannot be hit by a busy machine's
scheduling alone); /ready stays 200; /metrics counts lost spans; SIGTERM ends the process within 20 s.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from tests.integration.serve_helpers import PROGRAMS, serve

from .conftest import BlackHole, Reply, ScriptedHTTP, refused_port

pytestmark = pytest.mark.reliability

EXPORT_TIMEOUT_S = 5


def _dropped(metrics: str) -> float:
    return sum(
        float(v) for v in re.findall(r"^geode_spans_dropped_total\{[^}]*\} ([0-9.e+]+)$", metrics, re.M)
    )


def _dropped_for(metrics: str, reason: str) -> float:
    found = re.findall(rf'^geode_spans_dropped_total\{{reason="{reason}"\}} ([0-9.e+]+)$', metrics, re.M)
    return float(found[0]) if found else 0.0


# The reason an alert keys on: Phoenix at capacity is not Phoenix down.
_REASON = {"refused": "export_unreachable", "503": "export_rejected", "hanging": "export_unreachable"}


@pytest.mark.parametrize("fault", ["refused", "503", "hanging"])
def test_phoenix_faults_do_not_touch_requests(
    fault: str,
    tmp_path: Path,
    black_hole: BlackHole,
    http_server: Callable[[Callable[[str, bytes], Reply]], ScriptedHTTP],
) -> None:
    if fault == "refused":
        endpoint = f"http://127.0.0.1:{refused_port()}"
    elif fault == "503":
        endpoint = http_server(lambda path, body: Reply(503, {"error": "overloaded"})).url
    else:
        endpoint = f"http://127.0.0.1:{black_hole.port}"
    env = {
        "PHOENIX_COLLECTOR_ENDPOINT": endpoint,
        "GEODE_TRACING_QUEUE_SIZE": "64",
        "GEODE_TRACING_EXPORT_TIMEOUT_S": str(EXPORT_TIMEOUT_S),
    }
    with (
        serve([f"qa={PROGRAMS}:qa"], tmp_path / "home", env=env) as served,
        httpx.Client(base_url=served.url) as client,
    ):
        # The first request loads what the server builds lazily: 0.94-0.99 s on the loaded 2-core machine
        # whatever the fault (it failed the 1 s bound once at 1.02 s), so it is not what the bound is about.
        assert client.post("/programs/qa", json={"question": "warm-up"}).status_code == 200
        slowest = 0.0
        for n in range(150):
            started = time.perf_counter()
            response = client.post("/programs/qa", json={"question": f"q{n}"})
            slowest = max(slowest, time.perf_counter() - started)
            assert response.status_code == 200, response.text
            assert response.json()["outputs"]["answer"] == f"echo: q{n}"
        # Half the export deadline: a request blocked on an export takes the whole deadline, while a
        # request on a loaded 2-core machine was seen at 1.07 s (an earlier bound of 1 s with a 1 s
        # deadline could not tell the two apart).
        assert slowest < EXPORT_TIMEOUT_S / 2, f"a request took {slowest:.2f} s with Phoenix {fault}"
        assert client.get("/ready").status_code == 200
        deadline = time.monotonic() + 10
        reason = _REASON[fault]
        # The queue fills first (queue_full); the export's own failure is counted when it returns
        # (after the 503 retry, or the 5 s deadline of a hung collector).
        while _dropped_for(client.get("/metrics").text, reason) == 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        metrics = client.get("/metrics").text
        assert _dropped(metrics) > 0, metrics[-2000:]
        other = "export_rejected" if reason == "export_unreachable" else "export_unreachable"
        assert _dropped_for(metrics, reason) > 0 and _dropped_for(metrics, other) == 0, metrics[-2000:]
        print(
            f"\n[figure] T06/T01: Phoenix {fault}: {_dropped_for(metrics, reason):.0f} spans counted as {reason}"
        )
        seconds = served.stop(timeout_s=40)
    assert seconds < 20, f"shutdown took {seconds:.1f} s with Phoenix {fault}"
