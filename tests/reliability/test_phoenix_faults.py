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
        while _dropped(client.get("/metrics").text) == 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _dropped(client.get("/metrics").text) > 0, client.get("/metrics").text[-2000:]
        seconds = served.stop(timeout_s=40)
    assert seconds < 20, f"shutdown took {seconds:.1f} s with Phoenix {fault}"
