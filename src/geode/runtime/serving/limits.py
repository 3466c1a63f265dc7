"""Request size and shape limits, enforced before a body is parsed (uvicorn has no body-size flag).

:class:`BodyLimitMiddleware` refuses a body larger than the limit with 413 (from ``Content-Length``
when it is sent, else while reading a chunked body) and a body nested deeper than the limit with 422
(whatever its ``Content-Type``), so neither the JSON parser nor the program ever sees it.
:class:`NoSniffMiddleware` marks every response ``X-Content-Type-Options: nosniff``: a response carries
model output, and a browser must never take a JSON body holding ``<script>`` for a page.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from geode.runtime.serving.errors import error_body

__all__ = ["BodyLimitMiddleware", "NoSniffMiddleware", "json_depth_exceeds"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_OPEN = frozenset(b"[{")
_CLOSE = frozenset(b"]}")


def json_depth_exceeds(body: bytes, limit: int) -> bool:
    """Whether a JSON text nests arrays/objects deeper than ``limit`` (strings are skipped).

    Example:
        >>> json_depth_exceeds(b'{"a": [[1]]}', 3), json_depth_exceeds(b'{"a": [[1]]}', 2)
        (False, True)
    """
    # Cheap bound first: a body with few brackets cannot be deep.
    if body.count(b"[") + body.count(b"{") <= limit:
        return False
    depth = 0
    in_string = False
    escaped = False
    for byte in body:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in _OPEN:
            depth += 1
            if depth > limit:
                return True
        elif byte in _CLOSE:
            depth -= 1
    return False


class BodyLimitMiddleware:
    """ASGI middleware: cap the body size and the JSON nesting depth of every request body.

    Args:
        app: The wrapped application.
        max_body_bytes: Larger bodies get 413 ``payload_too_large``.
        max_json_depth: JSON nested deeper gets 422 ``invalid_input``.
    """

    def __init__(self, app: ASGIApp, *, max_body_bytes: int, max_json_depth: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_json_depth = max_json_depth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Check the body, then hand the request (with its body replayed) to the app."""
        if scope["type"] != "http" or scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        declared = _header(scope, b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                await _reject(send, 400, "invalid_input", "the Content-Length header is not a number")
                return
            if size > self.max_body_bytes:
                await self._too_large(send)
                return
        chunks: list[bytes] = []
        total = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > self.max_body_bytes:
                await self._too_large(send)
                return
            chunks.append(chunk)
            more = bool(message.get("more_body", False))
        body = b"".join(chunks)
        # Every body, whatever its Content-Type says: FastAPI parses a body sent without one (or
        # with another) as JSON all the same, so the header is no reason to skip the check.
        if json_depth_exceeds(body, self.max_json_depth):
            await _reject(
                send,
                422,
                "invalid_input",
                f"the JSON body is nested deeper than {self.max_json_depth} levels",
            )
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, send: Send) -> None:
        await _reject(
            send,
            413,
            "payload_too_large",
            f"the request body is larger than {self.max_body_bytes} bytes (GEODE_SERVE_MAX_BODY_BYTES)",
        )


class NoSniffMiddleware:
    """ASGI middleware: ``X-Content-Type-Options: nosniff`` on every HTTP response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Add the header to the response start, whoever sends it."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def marked(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), (b"x-content-type-options", b"nosniff")]
            await send(message)

        await self.app(scope, receive, marked)


def _header(scope: Scope, name: bytes) -> bytes | None:
    """The last value of header ``name`` (lower case), without building a dict of every header."""
    found: bytes | None = None
    for key, value in scope.get("headers", ()):
        # ASGI servers send names in lower case; an app called directly may not.
        if key == name or key.lower() == name:
            found = value
    return found


async def _reject(send: Send, status: int, code: str, message: str) -> None:
    payload = json.dumps(error_body(code, message)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})
