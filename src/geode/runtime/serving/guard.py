"""Who may call, and how much: API keys, per-key request rates and per-key token budgets.

Keys are compared in constant time and never logged; a caller is identified in metrics and limits by
a short hash of its key (``key:1a2b3c4d``), or by its address when the server runs without keys
(allowed only on a loopback address unless explicitly opted into).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from pydantic import SecretStr

from geode.errors import ConfigError
from geode.runtime.serving.errors import RateLimitedError, UnauthorizedError

__all__ = ["ApiKeys", "Quotas", "is_loopback"]


def is_loopback(host: str) -> bool:
    """Whether a bind address only accepts connections from this machine.

    Example:
        >>> is_loopback("127.0.0.1"), is_loopback("localhost"), is_loopback("0.0.0.0")
        (True, True, False)
    """
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _key_id(key: str) -> str:
    return "key:" + hashlib.sha256(key.encode()).hexdigest()[:8]


class ApiKeys:
    """The API keys a server accepts (``Authorization: Bearer <key>`` or ``X-API-Key: <key>``).

    Args:
        keys: Accepted keys; empty means no authentication.
        host: The bind address; serving without keys is refused unless it is a loopback address or
            ``allow_unauthenticated`` is set.
        allow_unauthenticated: Serve without keys on any address (behind a trusted proxy only).
    """

    def __init__(
        self, keys: Iterable[SecretStr | str], *, host: str, allow_unauthenticated: bool = False
    ) -> None:
        values = [k.get_secret_value() if isinstance(k, SecretStr) else k for k in keys]
        short = [k for k in values if len(k) < 16]
        if short:
            raise ConfigError(
                "API keys must be at least 16 characters",
                hint="generate one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'",
            )
        self._digests = [(hashlib.sha256(k.encode()).digest(), _key_id(k)) for k in values]
        if not self._digests and not is_loopback(host) and not allow_unauthenticated:
            raise ConfigError(
                f"refusing to serve on {host} without API keys",
                hint="set GEODE_SERVE_API_KEYS='[\"<key>\"]', bind to 127.0.0.1, or set "
                "GEODE_SERVE_ALLOW_UNAUTHENTICATED=true behind a trusted proxy",
            )

    @property
    def enabled(self) -> bool:
        """Whether requests must carry a key."""
        return bool(self._digests)

    def check(self, authorization: str | None, api_key: str | None, client: str | None) -> str:
        """The caller's identity for limits and metrics.

        Raises:
            UnauthorizedError: Keys are required and none, or an unknown one, was sent.
        """
        if not self._digests:
            return f"addr:{client or 'unknown'}"
        presented = api_key
        if presented is None and authorization:
            scheme, _, value = authorization.partition(" ")
            if scheme.lower() == "bearer" and value.strip():
                presented = value.strip()
        if not presented:
            raise UnauthorizedError(
                "this server needs an API key",
                hint="send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
            )
        digest = hashlib.sha256(presented.encode()).digest()
        found: str | None = None
        for known, key_id in self._digests:
            # Compare against every key so timing does not tell which one nearly matched.
            if hmac.compare_digest(digest, known):
                found = key_id
        if found is None:
            raise UnauthorizedError("unknown API key", hint="check the key, or ask the operator for one")
        return found


@dataclass
class _Bucket:
    tokens: float
    updated: float


class _TokenBuckets:
    """A token bucket per caller: ``capacity`` units, refilled continuously over ``period_s``."""

    def __init__(
        self, capacity: float, period_s: float, clock: Callable[[], float], max_callers: int
    ) -> None:
        self.capacity = capacity
        self.rate = capacity / period_s
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()
        self._max_callers = max_callers

    def _bucket(self, caller: str, now: float) -> _Bucket:
        bucket = self._buckets.get(caller)
        if bucket is None:
            if len(self._buckets) >= self._max_callers:
                # Full buckets carry no state worth keeping: forget them first.
                for key in [k for k, b in self._buckets.items() if self._level(b, now) >= self.capacity]:
                    del self._buckets[key]
            bucket = self._buckets[caller] = _Bucket(self.capacity, now)
        return bucket

    def _level(self, bucket: _Bucket, now: float) -> float:
        return min(self.capacity, bucket.tokens + (now - bucket.updated) * self.rate)

    def wait_for(self, caller: str, need: float) -> float:
        """Seconds until ``caller`` has ``need`` units (0 when it has them now); takes nothing."""
        with self._lock:
            now = self._clock()
            level = self._level(self._bucket(caller, now), now)
            return 0.0 if level >= need else (need - level) / self.rate

    def take(self, caller: str, amount: float) -> float:
        """Take ``amount`` units (the level may go negative: usage is known only after the fact).

        Returns the seconds to wait before the next unit is available, 0 if there is one now.
        """
        with self._lock:
            now = self._clock()
            bucket = self._bucket(caller, now)
            bucket.tokens = self._level(bucket, now) - amount
            bucket.updated = now
            return 0.0 if bucket.tokens >= 1 else (1 - bucket.tokens) / self.rate


class Quotas:
    """Per-caller request rate and LM token budget.

    Args:
        requests_per_minute: Requests a caller may send per minute (bursts up to this many); ``None``
            for no limit.
        tokens_per_hour: LM tokens (prompt + completion) a caller's requests may use per hour;
            checked before a request runs, charged after it with the tokens the LM reported.
        clock: Monotonic clock (for tests).
    """

    def __init__(
        self,
        *,
        requests_per_minute: int | None = None,
        tokens_per_hour: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        max_callers: int = 100_000,
    ) -> None:
        self._requests = (
            _TokenBuckets(requests_per_minute, 60.0, clock, max_callers) if requests_per_minute else None
        )
        self._tokens = _TokenBuckets(tokens_per_hour, 3600.0, clock, max_callers) if tokens_per_hour else None

    def admit(self, caller: str) -> None:
        """Count one request for ``caller``.

        Raises:
            RateLimitedError: The caller is over its request rate or out of token budget.
        """
        if self._tokens is not None:
            wait = self._tokens.wait_for(caller, 1)
            if wait > 0:
                raise RateLimitedError(
                    "this API key has used its LM token budget for now",
                    retry_after_s=math.ceil(wait),
                    hint="wait for the budget to refill, or ask the operator to raise GEODE_SERVE_TOKEN_BUDGET_PER_HOUR",
                )
        if self._requests is not None:
            wait = self._requests.wait_for(caller, 1)
            if wait > 0:
                raise RateLimitedError(
                    "too many requests for this API key",
                    retry_after_s=math.ceil(wait),
                    hint="slow down; the limit is GEODE_SERVE_RATE_LIMIT_PER_MINUTE",
                )
            self._requests.take(caller, 1)

    def charge(self, caller: str, tokens: int) -> None:
        """Charge the LM tokens a finished request used to ``caller``'s budget."""
        if self._tokens is not None and tokens > 0:
            self._tokens.take(caller, tokens)
