"""``POST /programs/<name>/stream``: a run's output fields as server-sent events.

Events are ``token`` (a chunk of one output field), ``status``, then ``prediction`` (the whole answer)
or ``error`` (its code and message; the status and headers are already sent), and ``done``. A client
that goes away stops the run; that is recorded as 499 (nginx's convention), not as a server error.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any, Final

import dspy
from fastapi import Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel

from geode.runtime.serving.calls import Call, Outcome, response_headers
from geode.runtime.serving.error_responses import retry_after
from geode.runtime.serving.errors import ClientClosedError, describe, error_body, status_for
from geode.runtime.serving.execution import execute
from geode.runtime.serving.hosting import Hosted
from geode.runtime.serving.server import Server
from geode.runtime.serving.spans import finish_span

__all__ = ["CLIENT_CLOSED_REQUEST", "run_stream"]

CLIENT_CLOSED_REQUEST: Final = 499
"""The status recorded for a stream whose client disconnected before the end (nginx's convention)."""


async def run_stream(server: Server, hosted: Hosted, request: Request, body: BaseModel, who: str) -> Response:
    """Admit and begin the call, start its run, and answer with the stream of its events."""
    # The slot is released when the run ends (in _produce), not when the response starts.
    call = await server.admit_and_begin(hosted, body, who, request)
    queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=64)
    client_gone = asyncio.Event()
    task = asyncio.get_running_loop().create_task(_produce(server, call, queue, client_gone))
    headers = {**response_headers(call), "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(
        _events(queue, task, client_gone), media_type="text/event-stream", headers=headers
    )


async def _produce(
    server: Server, call: Call, queue: asyncio.Queue[bytes | None], client_gone: asyncio.Event
) -> None:
    """Run the call, putting its events on ``queue`` and ``None`` after the last."""

    async def emit(item: Any) -> None:
        data = _stream_item(item)
        if data is not None:
            await queue.put(data)

    outcome: Outcome | None = None
    try:
        outcome = await execute(
            call, server.runtime, server.guard, server.settings.request_timeout_s, stream=emit
        )
    except BaseException as err:
        if isinstance(err, asyncio.CancelledError) and client_gone.is_set():
            # The client closed the stream: no server error (nginx's 499), not a request error;
            # the trace says so too (a cancellation would read as internal_error).
            finish_span(call, None, ClientClosedError("the client closed the stream mid-run"))
            server.account(call, None, CLIENT_CLOSED_REQUEST, None)
            raise
        finish_span(call, None, err)
        code, message = describe(err)
        server.account(call, None, status_for(code), code)
        if isinstance(err, asyncio.CancelledError):
            raise
        await queue.put(_error_event(call, err, code, message))
    else:
        finish_span(call, outcome, None)
        server.account(call, outcome, 200, None)
        server.after_success(call, outcome)
        await queue.put(_prediction_event(call, outcome))
    finally:
        server.run_slots.release()
        with contextlib.suppress(asyncio.QueueFull):
            queue.put_nowait(None)


async def _events(
    queue: asyncio.Queue[bytes | None], task: asyncio.Task[None], client_gone: asyncio.Event
) -> AsyncIterator[bytes]:
    try:
        while (item := await queue.get()) is not None:
            yield item
        yield b"event: done\ndata: {}\n\n"
    finally:
        # The client went away (or we are done): stop the run; its span ends in _produce().
        if not task.done():
            client_gone.set()
            task.cancel()
            with contextlib.suppress(BaseException):
                await task


def _error_event(call: Call, err: BaseException, code: str, message: str) -> bytes:
    return _sse(
        "error",
        error_body(
            code,
            message,
            request_id=call.request_id,
            trace_id=call.trace_id,
            # A stream's status and headers are sent: the retry hint travels in the event.
            extra={"retry_after_s": retry} if (retry := retry_after(err)) is not None else None,
        ),
    )


def _prediction_event(call: Call, outcome: Outcome) -> bytes:
    return _sse(
        "prediction",
        {
            "program": call.hosted.name,
            "version": call.version or "base",
            "outputs": outcome.outputs,
            "trace_id": call.trace_id,
            "session_id": call.session_id,
        },
    )


def _sse(event: str, data: Any) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


def _stream_item(item: Any) -> bytes | None:
    if isinstance(item, dspy.streaming.StreamResponse):
        return _sse(
            "token",
            {
                "field": item.signature_field_name,
                "chunk": item.chunk,
                "last": bool(getattr(item, "is_last_chunk", False)),
            },
        )
    if isinstance(item, dspy.streaming.StatusMessage):
        return _sse("status", {"message": item.message})
    return None
