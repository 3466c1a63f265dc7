"""The app's routes: operations, the program list, feedback, sessions, and one pair per program.

The operations are health, readiness and metrics; each program gets ``POST /programs/<name>`` (JSON)
and ``/programs/<name>/stream`` (server-sent events). Each route group is registered by its own function; the handlers call into the shared
:class:`~geode.runtime.serving.server.Server`. Routes behind the API key take the ``caller`` dependency.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel

from geode.runtime.serving.calls import Outcome, response_headers
from geode.runtime.serving.error_responses import error_response
from geode.runtime.serving.errors import describe, status_for
from geode.runtime.serving.execution import execute
from geode.runtime.serving.feedback_intake import FeedbackIn, FeedbackOut, accept_feedback
from geode.runtime.serving.hosting import Hosted, candidates, served
from geode.runtime.serving.openapi import CALLER_ERRORS, SECURED, error_responses
from geode.runtime.serving.server import Server
from geode.runtime.serving.spans import finish_span
from geode.runtime.serving.streaming import run_stream

__all__ = ["add_operation_routes", "add_program_routes"]

Caller = Callable[..., Any]
"""The dependency that checks the API key and rate limit and returns who is calling."""


def add_operation_routes(app: FastAPI, server: Server, caller: Caller) -> None:
    """Register every route but the programs' own, in the order the OpenAPI document lists them."""
    _add_health_routes(app, server)
    _add_program_list(app, server, caller)
    _add_feedback_route(app, server, caller)
    _add_session_routes(app, server, caller)


def _add_health_routes(app: FastAPI, server: Server) -> None:
    @app.get("/health", tags=["operations"])
    async def health() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/ready", tags=["operations"])
    async def ready() -> JSONResponse:
        """Readiness: programs loaded and not shutting down (503 while draining)."""
        programs_state = {}
        for hosted in server.hosted.values():
            now = served(server.runtime, hosted)
            split = [c for c in candidates(hosted, now) if c is not None]
            programs_state[hosted.name] = {
                "version": now.version or "base",
                "candidate": split[0].version if split else None,
                "problem": now.problem,
            }
        status = 503 if server.draining else 200
        return JSONResponse(
            {"status": "draining" if server.draining else "ready", "programs": programs_state}, status
        )

    @app.get("/metrics", tags=["operations"], response_class=Response)
    async def metrics() -> Response:
        """Prometheus metrics: requests, errors, latency, tokens and cost per program and version."""
        return Response(server.metrics.exposition(), media_type="text/plain; version=0.0.4; charset=utf-8")


def _add_program_list(app: FastAPI, server: Server, caller: Caller) -> None:
    @app.get("/programs", tags=["programs"], responses=error_responses(*CALLER_ERRORS), openapi_extra=SECURED)
    async def list_programs(_: str = Depends(caller)) -> list[dict[str, Any]]:
        """The hosted programs, their routes, fields and versions."""
        found = []
        for hosted in server.hosted.values():
            now = served(server.runtime, hosted)
            split = [
                {"version": c.version, "mode": c.mode, "share": c.share}
                for c in candidates(hosted, now)
                if c is not None
            ]
            found.append(
                {
                    "name": hosted.name,
                    "path": f"/programs/{hosted.route}",
                    "inputs": list(hosted.interface.input_names),
                    "outputs": list(hosted.interface.output_names),
                    "version": now.version or "base",
                    # The first candidate (kept for older clients), and every one.
                    "candidate": split[0] if split else None,
                    "candidates": split,
                }
            )
        return found


def _add_feedback_route(app: FastAPI, server: Server, caller: Caller) -> None:
    @app.post(
        "/feedback",
        tags=["feedback"],
        response_model=FeedbackOut,
        status_code=202,
        responses=error_responses(*CALLER_ERRORS, 400, 404),
        openapi_extra=SECURED,
    )
    async def feedback(body: FeedbackIn, who: str = Depends(caller)) -> FeedbackOut:
        """Record a score or label on a run served to this API key (a Phoenix annotation on its root span)."""
        return await accept_feedback(server, body, who)


def _add_session_routes(app: FastAPI, server: Server, caller: Caller) -> None:
    @app.get(
        "/sessions/{session_id}",
        tags=["sessions"],
        responses=error_responses(*CALLER_ERRORS, 404),
        openapi_extra=SECURED,
    )
    async def get_session(session_id: str, who: str = Depends(caller)) -> dict[str, Any]:
        """One of this API key's sessions: its turns, oldest first."""
        turns = server.sessions.turns(server.session_key(who, session_id))
        return {
            "session_id": session_id,
            "turns": [
                {
                    "inputs": dict(t.inputs),
                    "outputs": dict(t.outputs),
                    "trace_id": t.trace_id,
                    "version": t.version,
                }
                for t in turns
            ],
        }

    @app.delete(
        "/sessions/{session_id}",
        tags=["sessions"],
        status_code=204,
        responses=error_responses(*CALLER_ERRORS, 404),
        openapi_extra=SECURED,
    )
    async def delete_session(session_id: str, who: str = Depends(caller)) -> Response:
        """Forget one of this API key's sessions."""
        server.sessions.delete(server.session_key(who, session_id))
        return Response(status_code=204)


def add_program_routes(app: FastAPI, server: Server, hosted: Hosted, caller: Caller) -> None:
    """Register ``POST /programs/<route>`` and ``POST /programs/<route>/stream`` for one hosted program."""
    responses = error_responses(*CALLER_ERRORS, 400, 404, 502, 503, 504)  # 404: a version not served
    for suffix, handler, summary in (
        ("", functools.partial(_run_json, server, hosted), f"Run {hosted.name}"),
        (
            "/stream",
            functools.partial(run_stream, server, hosted),
            f"Run {hosted.name}, streaming output fields as server-sent events",
        ),
    ):
        app.add_api_route(
            f"/programs/{hosted.route}{suffix}",
            _endpoint(handler, hosted.request_model, caller),
            methods=["POST"],
            tags=["programs"],
            summary=summary,
            description=hosted.interface.instructions or "",
            response_model=hosted.response_model if not suffix else None,
            response_class=JSONResponse if not suffix else StreamingResponse,
            responses=responses,
            operation_id=f"run_{hosted.route.replace('.', '_').replace('-', '_')}{suffix.replace('/', '_')}",
            openapi_extra=SECURED,
        )


async def _run_json(server: Server, hosted: Hosted, request: Request, body: BaseModel, who: str) -> Response:
    call = await server.admit_and_begin(hosted, body, who, request)
    try:
        outcome: Outcome | None = None
        try:
            outcome = await execute(call, server.runtime, server.guard, server.settings.request_timeout_s)
        except Exception as err:
            finish_span(call, None, err)
            code, _ = describe(err)
            server.account(call, None, status_for(code), code)
            return error_response(call, err)
    finally:
        server.run_slots.release()
    finish_span(call, outcome, None)
    server.account(call, outcome, 200, None)
    server.after_success(call, outcome)
    payload = {
        "program": hosted.name,
        "version": call.version or "base",
        "outputs": outcome.outputs,
        "trace_id": call.trace_id,
        "session_id": call.session_id,
        "usage": {
            "prompt_tokens": outcome.prompt_tokens,
            "completion_tokens": outcome.completion_tokens,
            "total_tokens": outcome.prompt_tokens + outcome.completion_tokens,
            "cost_usd": outcome.cost_usd,
        },
    }
    return JSONResponse(payload, headers=response_headers(call))


def _endpoint(
    handler: Callable[[Request, BaseModel, str], Awaitable[Response]],
    model: type[BaseModel],
    caller: Caller,
) -> Callable[..., Awaitable[Response]]:
    """An endpoint whose signature names the generated request model (FastAPI reads the signature)."""

    async def endpoint(request: Request, body: BaseModel, who: str) -> Response:
        return await handler(request, body, who)

    endpoint.__signature__ = inspect.Signature(
        [
            inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Request),
            inspect.Parameter("body", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=model),
            inspect.Parameter(
                "who", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=str, default=Depends(caller)
            ),
        ],
        return_annotation=Response,
    )
    return endpoint
