"""A circuit breaker for calls to a Qdrant server.

A server that is down costs every search a connect error, and one that hangs costs every search the
whole client timeout. After ``failures`` consecutive network failures the breaker *opens*: calls fail at
once, without touching the network, for ``cooldown_s``. Then it is *half-open*: one probe goes through
(others still fail fast); its success closes the breaker, its failure opens it for another cool-down.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from geode.errors import StoreUnavailableError

__all__ = ["CircuitBreaker"]


class CircuitBreaker:
    """Counts consecutive failures of one server and fails fast while it is presumed down.

    Args:
        failures: Consecutive failures that open the breaker; ``0`` disables it.
        cooldown_s: How long it stays open before letting one probe through.
        clock: Monotonic seconds (a fake one in tests).

    Example:
        >>> now = [0.0]
        >>> breaker = CircuitBreaker(failures=2, cooldown_s=10.0, clock=lambda: now[0])
        >>> breaker.before("server")
        >>> breaker.failure(); breaker.failure()
        >>> breaker.state
        'open'
    """

    def __init__(
        self, *, failures: int = 3, cooldown_s: float = 10.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if failures < 0 or cooldown_s < 0:
            raise ValueError("failures and cooldown_s must be >= 0")
        self._threshold = failures
        self._cooldown_s = cooldown_s
        self._clock = clock
        self._lock = threading.Lock()
        self._consecutive = 0
        self._opened_at: float | None = None
        self._probing = False

    @property
    def state(self) -> str:
        """``closed``, ``open`` or ``half-open`` (the cool-down is over; a probe may go through)."""
        with self._lock:
            if self._opened_at is None:
                return "closed"
            return "open" if self._remaining() > 0 else "half-open"

    def _remaining(self) -> float:
        assert self._opened_at is not None
        return self._opened_at + self._cooldown_s - self._clock()

    def before(self, description: str) -> None:
        """Call before each server request: returns if it may go, raises if the breaker is open.

        Raises:
            StoreUnavailableError: The breaker is open (says when it will retry), or half-open with a
                probe already in flight.
        """
        if self._threshold == 0:
            return
        with self._lock:
            if self._opened_at is None:
                return
            remaining = self._remaining()
            if remaining <= 0 and not self._probing:
                self._probing = True  # this call is the probe
                return
            wait = f"retrying in {remaining:.1f} s" if remaining > 0 else "a probe request is in flight"
            raise StoreUnavailableError(
                f"{description} is presumed down: circuit breaker open after {self._consecutive} "
                f"consecutive failures; {wait}",
                hint="check that the server is up and GEODE_RETRIEVAL_QDRANT_URL; the cool-down is "
                "GEODE_RETRIEVAL_BREAKER_COOLDOWN_S",
            )

    def success(self) -> None:
        """The server answered (whatever the status): close the breaker."""
        with self._lock:
            self._consecutive = 0
            self._opened_at = None
            self._probing = False

    def failure(self) -> None:
        """The server could not be reached or did not answer in time."""
        if self._threshold == 0:
            return
        with self._lock:
            self._consecutive += 1
            self._probing = False
            if self._opened_at is not None or self._consecutive >= self._threshold:
                self._opened_at = self._clock()  # a failed probe restarts the cool-down
