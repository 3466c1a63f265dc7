"""The servers `bench_serve.py` measures, each run in its own process by ``bench_serve.py --serve``.

``serve_bare``: the bare FastAPI endpoint (with an OTLP endpoint: the same under Geode's tracing, the
1.25x target's floor); ``serve_geode``: Geode's app; ``serve_sink``: an OTLP/HTTP collector stub.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr

# At module level: FastAPI resolves the bare endpoint's annotations in this module's globals.
from starlette.requests import Request


class Question(BaseModel):
    """The bare endpoint's request body."""

    question: str


def _bench_lm() -> Any:
    from geode.testing import ScriptedLM

    class BenchLM(ScriptedLM):
        """ScriptedLM that keeps no call log (it would grow with every request)."""

        def record(self, call: Any) -> None:
            pass

    def answer(messages: list[dict[str, str]]) -> dict[str, Any]:
        question = messages[-1]["content"].split("[[ ## question ## ]]")[-1].split("\n\n")[0].strip()
        return {"answer": f"echo: {question}"}

    return BenchLM(answer)


def serve_bare(port: int, endpoint: str = "", home: str = "") -> None:
    """The bare endpoint; with ``endpoint``, its program runs under Geode's tracing (``bare, traced``).

    Traced, it is the floor of any server that traces its programs with Geode: the program's own
    spans (the module and its LM call, as ``Runtime.batch`` records them) exported to ``endpoint``,
    and none of Geode's serving work (no root span, run record, metrics or session). It tunes the
    garbage collector while it serves as Geode's app does.
    """
    import dspy
    from fastapi import FastAPI

    lm = _bench_lm()
    program = dspy.Predict("question -> answer")
    runtime: Any = None
    lifespan: Any = None
    if endpoint:
        from geode.runtime.runtime import Runtime
        from geode.runtime.serving.app import _collector_tuned_for_serving
        from geode.runtime.settings import Settings, TracingSettings

        tracing = TracingSettings(enabled=True, endpoint=endpoint, export_timeout_s=2.0)
        runtime = Runtime(Settings(home=Path(home), tracing=tracing), lm=lm)

        @contextlib.asynccontextmanager
        async def tuned(_: FastAPI) -> AsyncIterator[None]:
            # Geode's app tunes the garbage collector for the spans waiting on the export worker;
            # without it the floor would count collections Geode does not pay.
            with _collector_tuned_for_serving():
                yield

        lifespan = tuned

    app = FastAPI(lifespan=lifespan)

    def scope() -> contextlib.AbstractContextManager[Any]:
        if runtime is not None:
            return runtime.batch(disable_history=True)
        return dspy.context(lm=lm, disable_history=True)

    @app.post("/programs/qa")
    async def qa(body: Question, request: Request) -> dict[str, Any]:
        # Geode's auth check without API keys: the caller is named by its address (Geode keys its
        # cache namespace and run record by it; here it is only computed).
        _caller = f"addr:{request.client.host if request.client else 'unknown'}"
        with scope():
            prediction = await program.acall(question=body.question)
        return {"outputs": {"answer": prediction.answer}}

    @app.get("/ready")
    async def ready() -> dict[str, str]:
        return {"status": "ready"}

    _uvicorn(app, port, timeout_keep_alive=_keep_alive_s())


def _uvicorn(app: Any, port: int, **options: Any) -> None:
    """Serve ``app`` on loopback without access logs, as every server of this benchmark does."""
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False, **options)


def _keep_alive_s() -> int:
    # Both servers keep idle connections open as long as `geode serve` does (uvicorn's default, 5 s,
    # races the client's pool under overload: requests on a connection being closed fail).
    from geode.runtime.settings import ServeSettings

    return ServeSettings().keep_alive_s


class _SyncRuns:
    """The served-run index written inside each request, as before :class:`RunRecorder` batched it."""

    def __init__(self, index: Any) -> None:
        self.index = index
        self.delay_s = 0.0

    def remember(self, run: Any) -> None:
        self.index.remember(run)

    def find(self, trace_id: str) -> Any:
        return self.index.find(trace_id)

    def close(self, timeout_s: float = 0.0) -> None:
        pass


def serve_geode(port: int, endpoint: str, home: str, *, state: str = "on", state_url: str = "") -> None:
    import dspy

    from geode.runtime.runtime import Runtime
    from geode.runtime.serving import HostedProgram, create_app
    from geode.runtime.settings import ServeSettings, Settings, StateSettings, TracingSettings

    settings = Settings(
        home=Path(home),
        tracing=TracingSettings(enabled=True, endpoint=endpoint, export_timeout_s=2.0),
        # No per-caller rate limit: the load generator is one caller sending thousands of requests.
        serve=ServeSettings(rate_limit_per_minute=None),
        state=StateSettings(url=SecretStr(state_url) if state_url else None),
    )
    rt = Runtime(settings, lm=_bench_lm())
    app = create_app(rt, [HostedProgram(dspy.Predict("question -> answer"), name="qa")])
    server = app.state.geode
    if state == "off":
        from geode.runtime.serving.sessions import MemorySessionStore

        server.runs = None  # no run index in the database: feedback only for this process's runs
        server.sessions = MemorySessionStore()
    elif state == "sync":
        server.runs = _SyncRuns(server.runs.index)
    try:
        _uvicorn(
            app,
            port,
            reset_contextvars=True,  # as `geode serve`
            timeout_keep_alive=settings.serve.keep_alive_s,
        )
    finally:
        rt.close()


def serve_sink(port: int) -> None:
    """An OTLP/HTTP collector stub: decodes every export and counts the spans (``GET /count``)."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    # Starlette, not FastAPI: FastAPI reads handler annotations, and under `from __future__ import
    # annotations` a locally imported name does not resolve (an earlier stub answered every
    # export with 422, so "tracing on" never exported).
    received = {"exports": 0, "spans": 0}

    async def traces(request: Request) -> Response:
        export = ExportTraceServiceRequest.FromString(await request.body())
        received["exports"] += 1
        received["spans"] += sum(
            len(scope.spans) for resource in export.resource_spans for scope in resource.scope_spans
        )
        return Response(b"", media_type="application/x-protobuf")

    async def count(request: Request) -> Response:
        return JSONResponse(received)

    async def ready(request: Request) -> Response:
        return JSONResponse({"status": "ready"})

    app = Starlette(
        routes=[
            Route("/v1/traces", traces, methods=["POST"]),
            Route("/count", count),
            Route("/ready", ready),
        ]
    )
    _uvicorn(app, port)
