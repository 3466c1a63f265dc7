"""The soak (plan row T45), scaled to what a test run can afford: ``GEODE_SOAK_S`` seconds of load.

Injects, for the whole run: the trace collector down half the time (it answers 503 for alternating
phases), and 1 % of LM calls failing. Must hold: every request answers, 200 or the injected failure's
clear 502, and exactly the injected ones fail; resident memory and thread count stay flat after
warm-up; once the collector is back, spans reach it again within the exporter's longest rest after a
failure (30 s: it rests 1 s after a failure, doubling, instead of retrying into a dead collector).

CI runs it for 6 s (``make test``); ``make reliability-long`` runs it for 15 minutes. The plan's 24 h
soak, and its Qdrant restarts (no Qdrant server binary on these machines), are not run here.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dspy
import psutil
import pytest
from fastapi.testclient import TestClient

from geode.runtime.runtime import Runtime
from geode.runtime.serving import HostedProgram, create_app
from geode.runtime.settings import ServeSettings, Settings, TracingSettings
from geode.runtime.tracing.exporters import _MAX_REST_S
from geode.testing import ScriptedLM

from .conftest import Reply, ScriptedHTTP

pytestmark = [pytest.mark.reliability, pytest.mark.soak]

SOAK_S = float(os.environ.get("GEODE_SOAK_S", "6"))
PHASE_S = max(1.0, min(SOAK_S / 8, 30.0))  # collector up/down phases: 8 per run, 1-30 s each
FAIL_EVERY = 100  # 1 % of LM calls raise


class InjectedLMFailure(RuntimeError):
    """The failure the soak injects into one LM call in a hundred."""


@pytest.fixture
def collector(http_server: Callable[[Callable[[str, bytes], Reply]], ScriptedHTTP]) -> Iterator[Any]:
    state = {"up": True, "accepted": 0}

    def reply(path: str, body: bytes) -> Reply:
        if not state["up"]:
            return Reply(503, {"error": "down"})
        state["accepted"] += 1
        return Reply(200, {})

    server = http_server(reply)
    server.state = state  # type: ignore[attr-defined]
    yield server


def test_soak_with_the_collector_down_half_the_time_and_failing_lm_calls(
    collector: Any, tmp_path: Path
) -> None:
    calls = [0]
    lock = threading.Lock()

    def answer(messages: list[dict[str, str]]) -> dict[str, Any]:
        with lock:
            calls[0] += 1
            n = calls[0]
        if n % FAIL_EVERY == 0:
            raise InjectedLMFailure(f"injected failure of call {n}")
        return {"answer": "ok"}

    tracing = TracingSettings(endpoint=f"{collector.url}/v1/traces", queue_size=256, export_timeout_s=1.0)
    runtime = Runtime(lm=ScriptedLM(answer), settings=Settings(home=tmp_path / "home", tracing=tracing))
    app = create_app(runtime, [HostedProgram(dspy.Predict("question -> answer"), name="qa")], ServeSettings(
        rate_limit_per_minute=0
    ))  # fmt: skip
    process = psutil.Process()
    statuses: dict[int, int] = {}
    samples: list[tuple[float, int, int]] = []  # (elapsed s, RSS bytes, threads)
    with TestClient(app) as client:
        started = time.monotonic()
        n = 0
        while (elapsed := time.monotonic() - started) < SOAK_S:
            collector.state["up"] = int(elapsed // PHASE_S) % 2 == 0
            response = client.post("/programs/qa", json={"question": f"q{n}"})
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            if response.status_code != 200:
                assert response.status_code == 502, response.text
                assert "Traceback" not in response.text
            n += 1
            if n % 50 == 0:
                samples.append((elapsed, process.memory_info().rss, process.num_threads()))
        requests, lm_calls = n, calls[0]
        # Recovery: the collector comes back for good while requests keep coming (spans that end while
        # the exporter rests after a failure are dropped untried, so one request could prove nothing).
        collector.state["up"] = True
        before = collector.state["accepted"]
        back = time.monotonic()
        while collector.state["accepted"] == before and time.monotonic() - back < _MAX_REST_S + 10:
            client.post("/programs/qa", json={"question": "after"})  # (an injected failure is not counted)
            time.sleep(0.1)
        recovery_s = time.monotonic() - back
        stats = runtime.export_pipeline.stats if runtime.export_pipeline else None
    runtime.close()

    injected = lm_calls // FAIL_EVERY
    warm = [s for s in samples if s[0] >= min(2.0, SOAK_S / 4)] or samples
    rss_growth_mb = (warm[-1][1] - warm[0][1]) / 1e6
    thread_growth = warm[-1][2] - warm[0][2]
    print(
        f"\n[figure] soak {SOAK_S:.0f} s: {requests} requests ({requests / SOAK_S:.0f}/s), statuses {statuses}, "
        f"{injected} injected LM failures of {lm_calls} calls; RSS {warm[0][1] / 1e6:.0f} -> "
        f"{warm[-1][1] / 1e6:.0f} MB ({rss_growth_mb:+.1f} MB), threads {warm[0][2]} -> {warm[-1][2]}; "
        f"spans {stats}; collector back -> spans arrive in {recovery_s:.2f} s"
    )
    assert statuses.get(502, 0) == injected, statuses
    assert statuses.get(200, 0) == requests - injected
    assert thread_growth <= 2, samples[-5:]
    # Bounded, not zero: allocator arenas and DSPy's caches settle over the first minutes.
    assert rss_growth_mb < 50 + SOAK_S / 60 * 5, samples[-5:]
    assert recovery_s < _MAX_REST_S + 5
    assert stats is not None and sum(stats.failed.values()) > 0  # the down phases refused spans
