"""The circuit breaker in front of a Qdrant server, on a fake clock."""

from __future__ import annotations

import pytest

from geode.errors import StoreUnavailableError
from geode.retrieval._breaker import CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_opens_after_consecutive_failures_fails_fast_then_lets_one_probe_through() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failures=3, cooldown_s=10.0, clock=clock)
    for _ in range(2):
        breaker.before("server")
        breaker.failure()
    assert breaker.state == "closed"
    breaker.before("server")
    breaker.failure()
    assert breaker.state == "open"

    clock.now += 4.0
    with pytest.raises(
        StoreUnavailableError, match=r"circuit breaker open after 3 consecutive failures; retrying in 6\.0 s"
    ):
        breaker.before("server")

    clock.now += 6.0
    assert breaker.state == "half-open"
    breaker.before("server")  # the probe
    with pytest.raises(StoreUnavailableError, match="a probe request is in flight"):
        breaker.before("server")  # others still fail fast while it runs
    breaker.success()
    assert breaker.state == "closed"
    breaker.before("server")


def test_a_failed_probe_reopens_for_a_full_cool_down() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failures=1, cooldown_s=10.0, clock=clock)
    breaker.failure()
    clock.now += 10.0
    breaker.before("server")
    breaker.failure()
    assert breaker.state == "open"
    clock.now += 9.9
    with pytest.raises(StoreUnavailableError, match=r"retrying in 0\.1 s"):
        breaker.before("server")


def test_a_success_resets_the_count_and_zero_disables() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failures=2, cooldown_s=10.0, clock=clock)
    breaker.failure()
    breaker.success()
    breaker.failure()
    assert breaker.state == "closed"
    off = CircuitBreaker(failures=0, cooldown_s=10.0, clock=clock)
    for _ in range(10):
        off.before("server")
        off.failure()
    assert off.state == "closed"
