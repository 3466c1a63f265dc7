"""A start-up check that the Phoenix the runtime traces to accepts its API key.

With ``PHOENIX_ENABLE_AUTH`` on, Phoenix answers 401 to every span batch sent with a missing or wrong
key; the export pipeline counts those spans as ``export_unauthorized`` and logs once, but only when
the first batch goes out. ``geode serve`` asks Phoenix once at start-up instead (a read of one
project, in the background, bounded by a short timeout) and logs a warning naming the fix, so a wrong
key is seen when the server starts, not when someone looks for traces.
"""

from __future__ import annotations

import logging
import threading
from urllib.parse import urlsplit, urlunsplit

from geode.runtime.settings import Settings
from geode.runtime.tracing import phoenix_headers, resolve_endpoint

__all__ = ["check_phoenix_key", "check_phoenix_key_in_background"]

logger = logging.getLogger("geode.tracing")


def _base_url(endpoint: str) -> str:
    parts = urlsplit(endpoint)
    path = parts.path.rstrip("/")
    if path.endswith("/v1/traces"):
        path = path[: -len("/v1/traces")]
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def check_phoenix_key(settings: Settings, *, timeout_s: float = 3.0) -> str | None:
    """Ask the Phoenix spans go to whether it accepts the key; the problem, or ``None``.

    Only a 401 or 403 answer is a problem: a collector that is down, slow or not Phoenix (an
    OpenTelemetry collector answers 404 here) says nothing about the key, and export reports it.
    """
    import httpx

    try:
        endpoint = resolve_endpoint(settings)
    except Exception:
        return None  # a bad endpoint fails tracing's own set-up with its own message
    if endpoint is None:
        return None
    url = f"{_base_url(endpoint)}/v1/projects"
    host = (urlsplit(url).hostname or "").lower()
    try:
        with httpx.Client(
            timeout=timeout_s, trust_env=host not in ("127.0.0.1", "localhost", "::1")
        ) as client:
            response = client.get(url, params={"limit": 1}, headers=phoenix_headers(settings))
    except httpx.HTTPError:
        return None
    if response.status_code not in (401, 403):
        return None
    if settings.phoenix.api_key is None:
        return (
            f"Phoenix at {_base_url(endpoint)} requires an API key (HTTP {response.status_code}) and "
            "none is set: every span and feedback record will be refused. Set PHOENIX_API_KEY to a "
            "system key created in Phoenix's settings"
        )
    return (
        f"Phoenix at {_base_url(endpoint)} refused PHOENIX_API_KEY (HTTP {response.status_code}): "
        "every span and feedback record will be refused. Set PHOENIX_API_KEY to a valid system key "
        "created in Phoenix's settings"
    )


def check_phoenix_key_in_background(settings: Settings) -> threading.Thread:
    """Run :func:`check_phoenix_key` in a daemon thread and log its warning; start-up never waits."""

    def run() -> None:
        problem = check_phoenix_key(settings)
        if problem:
            logger.warning("%s.", problem)

    thread = threading.Thread(target=run, name="geode-phoenix-key-check", daemon=True)
    thread.start()
    return thread
