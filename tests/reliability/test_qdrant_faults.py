"""A Qdrant server that goes down and comes back: plan row T31's circuit breaker.

There is no Qdrant server binary on these machines; the qdrant-client server path runs against a
scripted HTTP server that "is down" by never answering within the client timeout (each such request
still reaches it, so the test can count what the breaker lets through), then answers like Qdrant.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import pytest

from geode.errors import StoreUnavailableError
from geode.retrieval import QdrantStore

from .conftest import Reply, ScriptedHTTP

pytestmark = pytest.mark.reliability

TIMEOUT_S = 1.0  # qdrant-client rounds its timeout up to whole seconds (math.ceil)
FAILURES = 3
COOLDOWN_S = 1.5
CALLS_WHILE_DOWN = 30


def test_t31_breaker_stops_calls_to_a_down_server_and_resumes_after_the_cool_down(
    http_server: Callable[..., ScriptedHTTP],
) -> None:
    """Injects: a Qdrant server that stops answering (each request outlives the 1 s client timeout)
    for 30 calls, then answers again.
    Must hold: after 3 consecutive failures the breaker opens: the server receives no further request
    and each call fails at once with an error saying the breaker is open and when it retries; after
    the cool-down one probe reaches the server, its success closes the breaker and calls flow again."""
    down = True

    def reply(path: str, body: bytes) -> Reply:
        if down:
            return Reply(delay_s=TIMEOUT_S * 2)
        return Reply(body={"result": {"collections": []}, "status": "ok", "time": 0.0})

    server = http_server(reply)
    store = QdrantStore.remote(
        server.url, timeout_s=TIMEOUT_S, breaker_failures=FAILURES, breaker_cooldown_s=COOLDOWN_S
    )
    try:
        closed_s: list[float] = []
        open_s: list[float] = []
        messages: list[str] = []
        for _ in range(CALLS_WHILE_DOWN):
            reached_before = len(server.requests)
            started = time.perf_counter()
            with pytest.raises(StoreUnavailableError) as caught:
                store.list_collections()
            elapsed = time.perf_counter() - started
            (closed_s if len(server.requests) > reached_before else open_s).append(elapsed)
            messages.append(str(caught.value))
        reached_while_down = len(server.requests)
        assert reached_while_down == FAILURES, f"{reached_while_down} requests reached a down server"
        assert all("did not answer within 1 s" in m for m in messages[:FAILURES])
        assert all(
            "circuit breaker open after 3 consecutive failures; retrying in" in m for m in messages[FAILURES:]
        ), messages[FAILURES]
        assert max(open_s) < TIMEOUT_S, "an open breaker must not wait on the network"

        down = False
        with pytest.raises(StoreUnavailableError, match="retrying in"):
            store.list_collections()  # the server is back, but the cool-down is not over
        assert len(server.requests) == FAILURES
        time.sleep(COOLDOWN_S)
        assert store.list_collections() == []  # the probe
        for _ in range(5):
            assert store.list_collections() == []
        assert len(server.requests) == FAILURES + 6
    finally:
        store.close()
    print(
        f"\n[figure] T31: {CALLS_WHILE_DOWN} calls to a down server, {reached_while_down} reached it "
        f"(breaker: {FAILURES} failures, {COOLDOWN_S} s cool-down); failed call "
        f"{statistics.median(closed_s) * 1000:.0f} ms while closed (timeout {TIMEOUT_S} s), "
        f"{statistics.median(open_s) * 1000:.2f} ms median / {max(open_s) * 1000:.2f} ms max while open; "
        f"after the cool-down the probe and 5 calls all reached it"
    )
