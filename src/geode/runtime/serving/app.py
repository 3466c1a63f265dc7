"""The HTTP app: one endpoint per hosted program, sessions, feedback, health, metrics.

:func:`create_app` builds a FastAPI app around a :class:`~geode.runtime.runtime.Runtime`. Each
request runs under its own ``dspy.context`` (LM history off, so memory stays flat), its own
:class:`~geode.traces.context.RunIdentity` and its own root span, whose trace id is returned in the
``X-Trace-Id`` header and the body. Programs run with ``acall`` when they have an async path and
through ``dspy.asyncify`` otherwise; every request has a deadline. Errors are JSON with a stable code.

This module composes the app; the parts live in their own modules: what is hosted
(:mod:`.hosting`), the shared server state (:mod:`.server`), the routes (:mod:`.routes`), streaming
(:mod:`.streaming`), running a call (:mod:`.execution`, :mod:`.spans`), feedback
(:mod:`.feedback_intake`), error responses (:mod:`.error_responses`) and the OpenAPI extras
(:mod:`.openapi`).
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

from fastapi import FastAPI, Request
from opentelemetry import trace
from starlette.routing import BaseRoute

from geode.runtime.feedback_sinks import FeedbackSink
from geode.runtime.programs import ProgramRef
from geode.runtime.runtime import Runtime

# The `X as X` imports are re-exports: those names were defined here before the app was split.
from geode.runtime.serving.calls import REQUEST_HEADER as REQUEST_HEADER
from geode.runtime.serving.calls import TRACE_HEADER as TRACE_HEADER
from geode.runtime.serving.calls import VERSION_HEADER as VERSION_HEADER
from geode.runtime.serving.error_responses import install_error_handlers
from geode.runtime.serving.feedback_intake import FeedbackIn as FeedbackIn
from geode.runtime.serving.feedback_intake import FeedbackOut as FeedbackOut
from geode.runtime.serving.hosting import HostedProgram
from geode.runtime.serving.limits import BodyLimitMiddleware, NoSniffMiddleware
from geode.runtime.serving.openapi import ErrorDetail as ErrorDetail
from geode.runtime.serving.openapi import ErrorOut as ErrorOut
from geode.runtime.serving.openapi import declare_security
from geode.runtime.serving.routes import add_operation_routes, add_program_routes
from geode.runtime.serving.server import Server
from geode.runtime.serving.sessions import SessionStore
from geode.runtime.serving.streaming import CLIENT_CLOSED_REQUEST as CLIENT_CLOSED_REQUEST
from geode.runtime.settings import ServeSettings
from geode.runtime.tracing import TracingPipeline

__all__ = ["HostedProgram", "create_app"]


def create_app(
    runtime: Runtime,
    programs: Sequence[ProgramRef | HostedProgram],
    settings: ServeSettings | None = None,
    *,
    sessions: SessionStore | None = None,
    feedback_sinks: Sequence[FeedbackSink] | None = None,
    host: str | None = None,
    tracer_provider: trace.TracerProvider | None = None,
    tracing: TracingPipeline | None = None,
) -> FastAPI:
    """Build the HTTP app hosting ``programs`` on ``runtime``.

    Args:
        runtime: Runs the programs (LM, tracing, registry).
        programs: References, modules or :class:`HostedProgram` specs; each gets ``POST /programs/<name>``
            and ``POST /programs/<name>/stream``.
        settings: Server settings; default ``runtime.settings.serve``.
        sessions: Where sessions live; default (``GEODE_SERVE_SESSIONS=state``) the runtime's state
            database, shared by every replica on it; ``memory``: this process, bounded by the settings.
        feedback_sinks: Where ``POST /feedback`` stores records, each tried once; default the
            runtime's durable outbox (:attr:`Runtime.feedback_outbox`): the feedback log under the
            Geode home, then the Phoenix the runtime traces to, re-sent until Phoenix takes it.
        host: The address the server binds (decides whether running without API keys is allowed);
            default ``settings.host``.
        tracer_provider: Where the request spans go; default ``tracing``'s, else the runtime's, else
            the global one.
        tracing: The export pipeline whose losses ``/metrics`` reports; default the runtime's.

    Raises:
        ConfigError: No programs, a program whose interface cannot be served, or no API keys on a
            public address.

    Example:
        >>> import dspy, geode
        >>> from geode.testing import ScriptedLM
        >>> rt = geode.Runtime(lm=ScriptedLM([{"answer": "4"}]), settings=geode.Settings(tracing={"enabled": False}))
        >>> app = create_app(rt, [HostedProgram(dspy.Predict("question -> answer"), name="qa")])
        >>> sorted(r.path for r in app.routes if r.path.startswith("/programs/"))
        ['/programs/qa', '/programs/qa/stream']
    """
    from geode.errors import ConfigError

    serve = settings or runtime.settings.serve
    if not programs:
        raise ConfigError("no programs to serve", hint="pass at least one program reference")
    server = Server(
        runtime,
        programs,
        serve,
        sessions=sessions,
        feedback_sinks=feedback_sinks,
        host=host or serve.host,
        tracer_provider=tracer_provider,
        tracing=tracing,
    )
    app = _new_app(server)

    async def caller(request: Request) -> str:
        # One dependency reading the headers itself: FastAPI's security classes cost two more
        # dependency resolutions on every request. The OpenAPI document declares the same schemes.
        return server.caller(request)

    declare_security(app)
    install_error_handlers(app)
    add_operation_routes(app, server, caller)
    before = len(app.router.routes)
    for hosted in server.hosted.values():
        add_program_routes(app, server, hosted, caller)
    _match_first(app, app.router.routes[before:])
    return app


def _match_first(app: FastAPI, first: Sequence[BaseRoute]) -> None:
    """Match ``first`` (the program routes) before every other route; the OpenAPI document keeps their order.

    The router tries routes in order, and FastAPI's own four (the OpenAPI document and the docs pages)
    and the seven operation routes came before the programs: about 8 us of path matching on every
    program request (docs/benchmarks.md, "Serving"). No other route shares a program route's path,
    so the order decides nothing but the time. The document lists the routes in the order they were
    added (operations, then programs, then any route added later), as before.
    """
    routes = app.router.routes
    moved = {id(route) for route in first}
    added_order = {id(route): n for n, route in enumerate(routes)}
    routes[:] = [*first, *(route for route in routes if id(route) not in moved)]
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            matched = app.router.routes
            last = len(added_order)
            # Routes added after create_app keep their place after the programs.
            app.router.routes = sorted(matched, key=lambda route: added_order.get(id(route), last))
            try:
                return generate()
            finally:
                app.router.routes = matched
        return generate()

    app.openapi = openapi  # FastAPI's documented way to customise the document


def _new_app(server: Server) -> FastAPI:
    """The FastAPI app around ``server``: its description, body limits, and draining on shutdown."""

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        with _collector_tuned_for_serving():
            yield
            await server.drain()

    app = FastAPI(
        title="Geode",
        summary="DSPy programs served by Geode",
        description="Each hosted program has `POST /programs/<name>` (JSON) and `/programs/<name>/stream` "
        "(server-sent events). Responses carry `X-Trace-Id`; send it to `POST /feedback`.",
        version=_version(),
        lifespan=lifespan,
    )
    app.state.geode = server
    app.add_middleware(
        BodyLimitMiddleware,
        max_body_bytes=server.settings.max_body_bytes,
        max_json_depth=server.settings.max_json_depth,
    )
    # Outermost: the size limit's own refusals are marked too.
    app.add_middleware(NoSniffMiddleware)
    return app


_YOUNG_COLLECTION_EVERY = 7000
"""Net container allocations between young garbage collections while serving (Python's default: 700)."""


@contextlib.contextmanager
def _collector_tuned_for_serving() -> Iterator[None]:
    """Tune the garbage collector for serving while the app runs; restored on shutdown.

    Each request leaves objects that outlive a few young collections (its spans wait for the export
    worker), so with Python's defaults young collections came every ten requests, each walking those
    spans again, and full collections every 1,500 or so, each walking the whole start-up heap (about
    240,000 objects: 140 ms, 90 us a request on average). What is alive at start-up (modules,
    programs, the LM) is frozen out of the collector's scans, and young collections come ten times
    less often, after most of a request's objects are gone: about 14 us a request in all, against
    35-50 (docs/benchmarks.md, "Serving"). No collection before freezing: on a large heap it costs
    more than the garbage it would free.
    """
    thresholds = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(max(thresholds[0], _YOUNG_COLLECTION_EVERY), *thresholds[1:])
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("geode")
    except PackageNotFoundError:
        return "0"
