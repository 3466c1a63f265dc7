"""The HTTP app: one endpoint per hosted program, sessions, feedback, health, metrics.

:func:`create_app` builds a FastAPI app around a :class:`~geode.runtime.runtime.Runtime`. Each
request runs under its own ``dspy.context`` (LM history off, so memory stays flat), its own
:class:`~geode.traces.context.RunIdentity` and its own root span, whose trace id is returned in the
``X-Trace-Id`` header and the body. Programs run with ``acall`` when they have an async path and
through ``dspy.asyncify`` otherwise; every request has a deadline. Errors are JSON with a stable code.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import random
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal

import dspy
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider as SDKTracerProvider
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode
from pydantic import BaseModel, Field, model_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from geode.adapters import SmallModelStreamListener
from geode.agents.tools import run_deadline
from geode.errors import GeodeError, InputError, VersionError
from geode.runtime.lm import response_cache_namespace
from geode.runtime.programs import ProgramRef
from geode.runtime.registry import RoutedVersion, ServedProgram
from geode.runtime.runtime import Runtime
from geode.runtime.serving.abandon import AbandonedRunGuard, Abandonment, RunAbandoned, abandonment
from geode.runtime.serving.errors import (
    ClientClosedError,
    DeadlineExceededError,
    NotFoundError,
    OverloadedError,
    ServiceUnavailableError,
    describe,
    error_body,
    retry_after_of,
    status_for,
    translate_program_errors,
)
from geode.runtime.serving.feedback import FeedbackRecord, FeedbackSink
from geode.runtime.serving.guard import ApiKeys, Quotas
from geode.runtime.serving.limits import BodyLimitMiddleware, NoSniffMiddleware
from geode.runtime.serving.metrics import ServerMetrics
from geode.runtime.serving.sampling import TraceGate, install_trace_gate
from geode.runtime.serving.schema import (
    ProgramInterface,
    interface_of,
    request_model,
    response_model,
    route_name,
)
from geode.runtime.serving.sessions import MemorySessionStore, SessionStore, Turn
from geode.runtime.serving.traffic import Candidate, in_share
from geode.runtime.settings import ServeSettings
from geode.runtime.state import RunRecorder, ServedRun, SqlRunIndex, SqlState
from geode.runtime.tracing import TracingPipeline
from geode.traces.context import RunIdentity, run_identity
from geode.traces.vocab import GeodeAttributes, OpenInferenceMimeTypeValues, SpanAttributes
from geode.traces.vocab import SpanKind as OISpanKind

CLIENT_CLOSED_REQUEST: Final = 499
"""The status recorded for a stream whose client disconnected before the end (nginx's convention)."""

if TYPE_CHECKING:
    # Imported for types only: geode.runtime.feedback imports this package's feedback module.
    from geode.runtime.feedback import FeedbackOutbox

__all__ = ["HostedProgram", "create_app"]

logger = logging.getLogger("geode.serve")

TRACE_HEADER = "X-Trace-Id"
VERSION_HEADER = "X-Geode-Version"
REQUEST_HEADER = "X-Request-Id"
_SCOPE = "geode.serve"


@dataclass
class HostedProgram:
    """A program the server hosts, and how its versions share traffic.

    Args:
        program: A reference (``module:attr``, ``file.py:attr`` or a registered name) — served from its
            active registry version, re-checked on every request so promotion and rollback apply live —
            or a ``dspy.Module`` served as given.
        name: The name in routes, spans and metrics; default: the reference (or the class name).
        candidate: A second version on a canary share or in shadow, pinned for this process (``geode
            serve --canary/--shadow``); without it, the route in the state database applies
            (``geode route``), which every replica follows.
        sample_ratio: Share of this program's traces exported (errors and runs that get feedback are
            always kept); default: the tracing settings' ratio.
    """

    program: ProgramRef
    name: str | None = None
    candidate: Candidate | None = None
    sample_ratio: float | None = None

    @classmethod
    def parse(cls, text: str) -> HostedProgram:
        """``NAME=REF`` (served as ``NAME``) or a bare ``REF``, as ``geode serve`` takes them.

        Example:
            >>> HostedProgram.parse("qa=geode.examples.qa:program").name
            'qa'
        """
        name, sep, ref = text.partition("=")
        if sep and name and ref and ":" not in name and "/" not in name:
            return cls(ref, name=name)
        return cls(text)


@dataclass
class _Hosted:
    name: str
    route: str
    aliases: tuple[str, ...]
    program: ProgramRef
    interface: ProgramInterface
    request_model: type[BaseModel]
    response_model: type[BaseModel]
    candidate: Candidate | None
    sample_ratio: float | None


@dataclass
class _RecentRun:
    span_id: str
    program: str
    version: str | None
    caller: str
    """Who ran it: only that API key may send feedback on it."""


@dataclass
class _Outcome:
    outputs: dict[str, Any]
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = None


@dataclass
class _Call:
    """Everything about one request's run, filled in as it goes."""

    hosted: _Hosted
    module: dspy.Module
    version: str | None
    role: str
    inputs: dict[str, Any]
    session_id: str | None
    user_id: str | None
    request_id: str
    caller: str
    lm_overrides: dict[str, Any] = field(default_factory=dict[str, Any])
    background: bool = False
    """A shadow run the server started itself (not charged to the caller)."""
    shadow: Candidate | RoutedVersion | None = None
    """The shadow candidate to run on a copy of this call once it answered, if any."""
    abandoned: Abandonment = field(default_factory=Abandonment)
    span: Span | None = None
    trace_id: str | None = None
    started: float = field(default_factory=time.perf_counter)


class FeedbackIn(BaseModel):
    """A score and/or label on one served run."""

    trace_id: str = Field(pattern=r"^[0-9a-f]{32}$", description="The X-Trace-Id of the run.")
    name: str = Field(default="user_feedback", min_length=1, max_length=100)
    score: float | None = Field(default=None, ge=-1e9, le=1e9)
    label: str | None = Field(default=None, max_length=200)
    explanation: str | None = Field(default=None, max_length=4000)
    annotator_kind: Literal["HUMAN", "CODE", "LLM"] = "HUMAN"
    span_id: str | None = Field(default=None, pattern=r"^[0-9a-f]{16}$")

    @model_validator(mode="after")
    def _says_something(self) -> FeedbackIn:
        # Feedback with nothing in it would be an empty annotation: refuse it as rt.feedback does.
        if self.score is None and self.label is None and not self.explanation:
            raise ValueError("feedback needs a score, a label or an explanation")
        return self


class FeedbackOut(BaseModel):
    """Where the feedback is: each target either holds it now or will be sent it."""

    trace_id: str
    delivered: list[str]
    """Targets that hold it now: ``local`` (the feedback log under the Geode home), ``phoenix``."""
    pending: list[str] = Field(default_factory=list)
    """Targets it is queued for in the durable outbox, re-sent until they take it (``phoenix`` while
    Phoenix is down or has not ingested the run yet)."""
    problems: list[str] = Field(default_factory=list)


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    to_dict = getattr(value, "to_dict", None)
    if callable(to_dict):
        with contextlib.suppress(Exception):
            return _jsonable(to_dict())
    return str(value)


def _usage_of(prediction: Any) -> tuple[int, int, float | None]:
    getter = getattr(prediction, "get_lm_usage", None)
    usage: Any = getter() if callable(getter) else None
    prompt = completion = 0
    cost: float | None = None
    for entry in (usage or {}).values():
        if not isinstance(entry, Mapping):
            continue
        prompt += int(entry.get("prompt_tokens") or 0)
        completion += int(entry.get("completion_tokens") or 0)
        value = entry.get("cost")
        if isinstance(value, int | float):
            cost = (cost or 0.0) + float(value)
    return prompt, completion, cost


def _has_async_path(module: dspy.Module) -> bool:
    return callable(getattr(module, "aforward", None))


def _hex_trace(span: Span) -> str | None:
    ctx = span.get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else None


class _Server:
    def __init__(
        self,
        runtime: Runtime,
        programs: Sequence[ProgramRef | HostedProgram],
        settings: ServeSettings,
        *,
        sessions: SessionStore | None,
        feedback_sinks: Sequence[FeedbackSink] | None,
        host: str,
        tracer_provider: trace.TracerProvider | None,
        tracing: TracingPipeline | None,
    ) -> None:
        self.runtime = runtime
        self.settings = settings
        self.keys = ApiKeys(
            settings.api_keys, host=host, allow_unauthenticated=settings.allow_unauthenticated
        )
        self.quotas = Quotas(
            requests_per_minute=settings.rate_limit_per_minute, tokens_per_hour=settings.token_budget_per_hour
        )
        state = runtime.state if isinstance(runtime, Runtime) else None
        self.sessions: SessionStore = sessions or _default_sessions(settings, state)
        # Every replica on the state database records its runs there, so feedback for a run is
        # accepted by any of them; `recent` spares this replica the lookup for its own runs. The
        # writes are batched off the request path: one transaction per request was most of the
        # state database's cost to a request (docs/benchmarks.md, "Shared state").
        self.runs: RunRecorder | None = (
            RunRecorder(
                SqlRunIndex(state, retention_s=settings.run_retention_s), delay_s=settings.run_index_delay_s
            )
            if state is not None
            else None
        )
        self.tracing: TracingPipeline | None = tracing or _pipeline_of(runtime)
        provider = (
            tracer_provider
            or (self.tracing.provider if self.tracing is not None else None)
            or getattr(runtime, "tracer_provider", None)
            or trace.get_tracer_provider()
        )
        self.tracer = provider.get_tracer(_SCOPE)
        self.metrics = ServerMetrics(
            meter_provider=getattr(runtime, "meter_provider", None), dropped_spans=self._dropped_spans
        )
        # Explicit sinks are tried once each; by default feedback goes through the runtime's durable
        # outbox, as rt.feedback does (the local log, then Phoenix, re-sent until Phoenix takes it).
        self.feedback_sinks: list[FeedbackSink] = list(feedback_sinks or ())
        self.outbox: FeedbackOutbox | None = runtime.feedback_outbox if feedback_sinks is None else None
        if self.outbox is not None:
            # Records another (maybe dead) replica left waiting are this one's to deliver too.
            self.outbox.resume()
        self.recent: OrderedDict[str, _RecentRun] = OrderedDict()
        self.hosted: dict[str, _Hosted] = {}
        self.draining = False
        self.background: set[asyncio.Task[None]] = set()
        self.shadow_slots = asyncio.Semaphore(settings.shadow_max_in_flight)
        self.run_slots = asyncio.Semaphore(settings.max_in_flight)
        self.guard = AbandonedRunGuard()
        self.gate: TraceGate | None = None
        for spec in programs:
            hosted = self._host(spec if isinstance(spec, HostedProgram) else HostedProgram(spec))
            if hosted.route in self.hosted:
                raise GeodeError(
                    f"two programs would be served at /programs/{hosted.route}", hint="serve them as NAME=REF"
                )
            self.hosted[hosted.route] = hosted
        ratios = {h.name: h.sample_ratio for h in self.hosted.values() if h.sample_ratio is not None}
        if isinstance(provider, SDKTracerProvider) and (ratios or settings.trace_sample_ratio < 1.0):
            self.gate = install_trace_gate(
                provider, ratios, settings.trace_sample_ratio, hold_s=settings.feedback_hold_s
            )

    # -- set-up --------------------------------------------------------------------------------

    def _dropped_spans(self) -> Mapping[str, int]:
        stats = getattr(self.tracing, "stats", None)
        if stats is None:
            return {}
        failed = getattr(stats, "failed", {}) or {}
        by_kind: Mapping[str, int] = getattr(stats, "failed_by_kind", {}) or {}
        counts = {
            "queue_full": int(getattr(stats, "dropped_queue_full", 0)),
            "after_shutdown": int(getattr(stats, "dropped_after_shutdown", 0)),
        }
        # Export losses by why, so an alert can tell a collector at capacity (429/503: rejected) or
        # refusing the key (unauthorized) from one that is down (unreachable).
        counts["export_failed"] = int(sum(failed.values()))
        for kind in ("rejected", "unauthorized", "unreachable"):
            counts[f"export_{kind}"] = int(by_kind.get(kind, 0))
            counts["export_failed"] -= counts[f"export_{kind}"]
        return counts

    def _host(self, spec: HostedProgram) -> _Hosted:
        resolved = self.runtime.resolve(spec.program)
        name = spec.name or resolved.name
        route = route_name(name)
        interface = interface_of(resolved.module)
        model = "".join(
            part.capitalize() for part in route.replace("-", ".").replace("_", ".").split(".") if part
        )
        aliases = tuple(a for a in dict.fromkeys((resolved.name, *resolved.aliases)) if a != name)
        return _Hosted(
            name=name,
            route=route,
            aliases=aliases,
            program=spec.program,
            interface=interface,
            request_model=request_model(
                f"{model}Request",
                interface,
                max_chars=self.settings.max_field_chars,
                max_items=self.settings.max_list_items,
            ),
            response_model=response_model(f"{model}Response", interface),
            candidate=spec.candidate,
            sample_ratio=spec.sample_ratio,
        )

    # -- per request ---------------------------------------------------------------------------

    def caller(self, request: Request) -> str:
        """Who is calling (checked against the API keys), admitted by the rate limit."""
        if self.draining:
            raise ServiceUnavailableError("the server is shutting down", hint="retry on another replica")
        headers = request.headers
        client = request.client.host if request.client else None
        who = self.keys.check(headers.get("authorization"), headers.get("x-api-key") or None, client)
        self.quotas.admit(who)
        return who

    def served(self, hosted: _Hosted) -> ServedProgram:
        """What answers for the program now: its active version and its route's candidates."""
        if isinstance(hosted.program, str):
            return self.runtime.serve(hosted.program)
        return ServedProgram(hosted.name, hosted.program, None)

    @staticmethod
    def candidates(
        hosted: _Hosted, served: ServedProgram
    ) -> tuple[Candidate | RoutedVersion | None, Candidate | RoutedVersion | None]:
        """The canary and the shadow: this process's ``--canary``/``--shadow``, else the database's route."""
        pinned = hosted.candidate
        if pinned is not None:
            return (pinned, None) if pinned.mode == "canary" else (None, pinned)
        return served.canary, served.shadow

    def choose(
        self, hosted: _Hosted, asked: str | None, key: str
    ) -> tuple[dspy.Module, str | None, str, Candidate | RoutedVersion | None]:
        """The module, version and role that answer, and the shadow to run after (if any)."""
        served = self.served(hosted)
        module, version = served.module, served.version
        canary, shadow = self.candidates(hosted, served)
        if asked is not None:
            if asked in (version, "base" if version is None else version):
                return module, version, "primary", None
            for candidate in (canary, shadow):
                if candidate is not None and asked == candidate.version:
                    return candidate.module, candidate.version, candidate.mode, None
            listed = [version or "base", *(c.version for c in (canary, shadow) if c is not None)]
            raise VersionError(
                f"version {asked!r} of {hosted.name!r} is not served here",
                hint=f"served: {', '.join(listed)}",
            )
        if canary is not None and in_share(key, canary.share, salt=hosted.name):
            return canary.module, canary.version, "canary", None
        return module, version, "primary", shadow

    @staticmethod
    def session_key(caller: str, session_id: str) -> str:
        """Where a caller's session lives in the store.

        Each API key has its own sessions, so one caller can neither read nor continue another's,
        whatever id it sends.
        """
        return f"{caller}\x1f{session_id}"

    async def admit(self) -> None:
        """Take a run slot, waiting at most ``queue_timeout_s``.

        Raises:
            OverloadedError: Every slot stayed busy (503 with ``Retry-After``).
        """
        wait = self.settings.queue_timeout_s
        try:
            async with asyncio.timeout(wait):
                await self.run_slots.acquire()
        except TimeoutError:
            self.metrics.shed()
            raise OverloadedError(
                f"all {self.settings.max_in_flight} run slots stayed busy for {wait:g} s",
                retry_after_s=max(1.0, wait),
                hint="retry after Retry-After seconds; the operator sets GEODE_SERVE_MAX_IN_FLIGHT",
            ) from None

    async def admit_and_begin(self, hosted: _Hosted, body: BaseModel, caller: str, request: Request) -> _Call:
        """:meth:`admit`, then :meth:`begin`; the slot is given back if the call cannot begin.

        The caller releases the slot (``run_slots``) when the run ends.
        """
        await self.admit()
        try:
            return self.begin(hosted, body, caller, request)
        except BaseException:
            self.run_slots.release()
            raise

    def inputs_of(self, hosted: _Hosted, body: BaseModel, session_key: str | None) -> dict[str, Any]:
        inputs = {name: getattr(body, name) for name in hosted.interface.input_names}
        inputs = {k: v for k, v in inputs.items() if v is not None or k in body.model_fields_set}
        if hosted.interface.history_field is not None:
            turns = self.sessions.turns(session_key) if session_key else ()
            inputs[hosted.interface.history_field] = dspy.History(messages=[t.message() for t in turns])
        return inputs

    def start_span(self, call: _Call, links: Sequence[Link] = ()) -> Span:
        attrs: dict[str, Any] = {
            SpanAttributes.OPENINFERENCE_SPAN_KIND: OISpanKind.CHAIN.value,
            GeodeAttributes.PROGRAM_NAME: call.hosted.name,
            **({GeodeAttributes.PROGRAM_ALIASES: call.hosted.aliases} if call.hosted.aliases else {}),
            GeodeAttributes.SERVE_ROLE: call.role,
            GeodeAttributes.SERVE_REQUEST_ID: call.request_id,
            SpanAttributes.INPUT_VALUE: json.dumps(_jsonable(_visible(call)), ensure_ascii=False),
            SpanAttributes.INPUT_MIME_TYPE: OpenInferenceMimeTypeValues.JSON.value,
        }
        if call.version:
            attrs[GeodeAttributes.PROGRAM_VERSION] = call.version
        if call.session_id:
            attrs[SpanAttributes.SESSION_ID] = call.session_id
        if call.user_id:
            attrs[SpanAttributes.USER_ID] = call.user_id
        # A new root: the request's trace starts here, whatever trace context the caller sent.
        return self.tracer.start_span(
            call.hosted.name,
            context=otel_context.Context(),
            kind=SpanKind.SERVER,
            attributes=attrs,
            links=links,
        )

    async def execute(
        self, call: _Call, *, stream: Callable[[Any], Awaitable[None]] | None = None
    ) -> _Outcome:
        """Run the program for one call under its span, identity, settings and deadline."""
        assert call.span is not None
        identity = RunIdentity(
            program=call.hosted.name,
            aliases=call.hosted.aliases,
            version=call.version,
            session_id=call.session_id,
            user_id=call.user_id,
            metadata={"request_id": call.request_id, "role": call.role},
        )
        timeout = self.settings.request_timeout_s
        lm = call.lm_overrides.get("lm") or self.runtime.lm
        token = otel_context.attach(trace.set_span_in_context(call.span))
        try:
            with (
                run_identity(identity),
                # The runtime's LM, adapter and callbacks, with its spans routed to its provider, and
                # this request's own overrides. LM history stays off so memory stays flat.
                self.runtime.batch(disable_history=True, **call.lm_overrides),
                # Each API key answers from its own cached responses, never another key's (T25).
                response_cache_namespace(call.caller, ensure=bool(getattr(lm, "cache", True))),
                # First of the callbacks: an abandoned run's next LM call stops before any span opens.
                dspy.context(callbacks=[self.guard, *dspy.settings.callbacks]),
                abandonment(call.abandoned),
                run_deadline(time.monotonic() + timeout),
                translate_program_errors(call.hosted.name),
            ):
                try:
                    async with asyncio.timeout(timeout):
                        prediction = await self._run(call, stream)
                except TimeoutError as err:
                    # A sync program's thread runs on; it makes no further LM call.
                    call.abandoned.set()
                    raise DeadlineExceededError(
                        f"{call.hosted.name!r} did not answer within {timeout:g} s",
                        hint="retry later, shorten the input, or raise GEODE_SERVE_REQUEST_TIMEOUT_S",
                    ) from err
        except RunAbandoned as err:  # the run outlived its request (it never should reach here)
            raise DeadlineExceededError(f"{call.hosted.name!r} was abandoned at its deadline") from err
        finally:
            otel_context.detach(token)
        prompt, completion, cost = _usage_of(prediction)
        outputs = {name: _jsonable(prediction.get(name)) for name in call.hosted.interface.output_names}
        return _Outcome(outputs, prompt, completion, cost)

    async def _run(self, call: _Call, stream: Callable[[Any], Awaitable[None]] | None) -> Any:
        module = call.module
        if stream is None:
            if _has_async_path(module):
                return await module.acall(**call.inputs)
            runner: Callable[..., Awaitable[Any]] = dspy.asyncify(module)
            return await runner(**call.inputs)
        listeners = _listeners(module, call.hosted.interface.output_names)
        streamer: Any = dspy.streamify(
            module, stream_listeners=listeners, is_async_program=_has_async_path(module)
        )
        prediction: Any = None
        async for item in streamer(**call.inputs):
            if isinstance(item, dspy.Prediction):
                prediction = item
            else:
                await stream(item)
        if prediction is None:
            raise GeodeError(f"{call.hosted.name!r} streamed no final prediction")
        return prediction

    def finish_span(self, call: _Call, outcome: _Outcome | None, err: BaseException | None) -> None:
        span = call.span
        if span is None:
            return
        with contextlib.suppress(Exception):
            if outcome is not None:
                span.set_attribute(
                    SpanAttributes.OUTPUT_VALUE, json.dumps(outcome.outputs, ensure_ascii=False)
                )
                span.set_attribute(SpanAttributes.OUTPUT_MIME_TYPE, OpenInferenceMimeTypeValues.JSON.value)
                span.set_status(Status(StatusCode.OK))
            elif err is not None:
                code, message = describe(err)
                span.set_attribute(GeodeAttributes.SERVE_ERROR_CODE, code)
                span.record_exception(err)
                span.set_status(Status(StatusCode.ERROR, f"{code}: {message}"[:500]))
        span.end()

    def remember(self, call: _Call) -> None:
        if call.span is None or call.trace_id is None:
            return
        span_id = format(call.span.get_span_context().span_id, "016x")
        self.recent[call.trace_id] = _RecentRun(span_id, call.hosted.name, call.version, call.caller)
        while len(self.recent) > self.settings.max_recent_runs:
            self.recent.popitem(last=False)
        if self.runs is not None:
            try:
                self.runs.remember(
                    ServedRun(call.trace_id, span_id, call.hosted.name, call.version, call.caller)
                )
            except Exception as err:  # the answer is made: feedback then reaches this replica only
                logger.warning("run %s not recorded in the state database: %s", call.trace_id, err)

    def find_run(self, trace_id: str) -> _RecentRun | None:
        """A run served by this replica, or by any replica on the state database."""
        known = self.recent.get(trace_id)
        if known is None and self.runs is not None:
            run = self.runs.find(trace_id)
            if run is not None:
                known = _RecentRun(run.span_id, run.program, run.version, run.caller)
        return known

    def account(self, call: _Call, outcome: _Outcome | None, status: int, code: str | None) -> None:
        prompt = outcome.prompt_tokens if outcome else 0
        completion = outcome.completion_tokens if outcome else 0
        self.metrics.finished(
            call.hosted.name,
            call.version,
            status=status,
            seconds=time.perf_counter() - call.started,
            error_code=code,
            prompt_tokens=prompt,
            completion_tokens=completion,
            cost_usd=outcome.cost_usd if outcome else None,
        )
        if not call.background:  # a request naming the shadow version pays like any other
            self.quotas.charge(call.caller, prompt + completion)

    def headers(self, call: _Call) -> dict[str, str]:
        headers = {REQUEST_HEADER: call.request_id, VERSION_HEADER: call.version or "base"}
        if call.trace_id:
            headers[TRACE_HEADER] = call.trace_id
        return headers

    def error_response(
        self, call: _Call | None, err: BaseException, request_id: str | None = None
    ) -> JSONResponse:
        code, message = describe(err)
        status = status_for(code)
        if code == "internal_error":
            logger.error("request %s failed", request_id or (call.request_id if call else "?"), exc_info=err)
        headers = self.headers(call) if call is not None else {}
        extra: dict[str, Any] = {}
        retry = _retry_after(err)
        if retry is not None:
            headers["Retry-After"] = str(max(1, round(retry)))
            extra["retry_after_s"] = retry
        body = error_body(
            code,
            message,
            request_id=call.request_id if call else request_id,
            trace_id=call.trace_id if call else None,
            extra=extra,
        )
        return JSONResponse(body, status_code=status, headers=headers)

    def begin(self, hosted: _Hosted, body: BaseModel, caller: str, request: Request) -> _Call:
        # Not `secrets`: os.urandom is a syscall, and giving up the GIL there costs up to a switch
        # interval (5 ms) whenever the span-export thread is busy. Request ids need not be secret.
        request_id = request.headers.get(REQUEST_HEADER) or format(random.getrandbits(64), "016x")
        request_id = request_id[:64]
        session_id: str | None = getattr(body, "session_id", None)
        module, version, role, shadow = self.choose(
            hosted, getattr(body, "version", None), session_id or request_id
        )
        options = getattr(body, "options", None)
        overrides: dict[str, Any] = {}
        if options is not None:
            changes = options.model_dump(exclude_none=True)
            cap = self.runtime.settings.lm.max_tokens
            if changes.get("max_tokens", 0) > cap:
                raise InputError(
                    f"options.max_tokens may be at most {cap} here",
                    hint="the operator's limit is GEODE_LM_MAX_TOKENS",
                )
            if changes:
                overrides["lm"] = self.runtime.lm.copy(**changes)
        call = _Call(
            hosted=hosted,
            module=module,
            version=version,
            role=role,
            inputs=self.inputs_of(hosted, body, self.session_key(caller, session_id) if session_id else None),
            session_id=session_id,
            user_id=getattr(body, "user_id", None),
            request_id=request_id,
            caller=caller,
            lm_overrides=overrides,
            shadow=shadow,
        )
        call.span = self.start_span(call)
        call.trace_id = _hex_trace(call.span)
        self.metrics.started()
        return call

    def after_success(self, call: _Call, outcome: _Outcome) -> None:
        self.remember(call)
        if call.session_id:
            visible = {
                k: _jsonable(v) for k, v in call.inputs.items() if k != call.hosted.interface.history_field
            }
            self.sessions.append(
                # The version the response named ("base" for the program as defined in code).
                self.session_key(call.caller, call.session_id),
                Turn(visible, outcome.outputs, trace_id=call.trace_id, version=call.version or "base"),
            )
        candidate = call.shadow
        if (
            candidate is not None
            and call.role == "primary"
            and in_share(call.request_id, candidate.share, salt=call.hosted.name)
        ):
            self.shadow(call, candidate)

    def shadow(self, primary: _Call, candidate: Candidate | RoutedVersion) -> None:
        if self.shadow_slots.locked():
            self.metrics.shadow(primary.hosted.name, "skipped")
            return
        call = _Call(
            hosted=primary.hosted,
            module=candidate.module,
            version=candidate.version,
            role="shadow",
            inputs=dict(primary.inputs),
            session_id=primary.session_id,
            user_id=primary.user_id,
            request_id=primary.request_id,
            caller=primary.caller,
            lm_overrides=dict(primary.lm_overrides),
            background=True,
        )

        async def run() -> None:
            async with self.shadow_slots:
                link = [Link(primary.span.get_span_context())] if primary.span is not None else []
                call.span = self.start_span(call, link)
                call.trace_id = _hex_trace(call.span)
                self.metrics.started()
                outcome: _Outcome | None = None
                try:
                    outcome = await self.execute(call)
                except Exception as err:
                    self.finish_span(call, None, err)
                    code, _ = describe(err)
                    self.account(call, None, status_for(code), code)
                    self.metrics.shadow(call.hosted.name, "error")
                    return
                self.finish_span(call, outcome, None)
                self.remember(call)
                self.account(call, outcome, 200, None)
                self.metrics.shadow(call.hosted.name, "ok")

        task = asyncio.get_running_loop().create_task(run())
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    async def feedback(self, body: FeedbackIn, caller: str) -> FeedbackOut:
        known = await asyncio.to_thread(self.find_run, body.trace_id)
        if known is None and self.runs is not None:
            # Another replica may have answered this run a moment ago and not written its batch yet.
            grace = 2 * self.settings.run_index_delay_s + 0.5
            step = max(0.05, self.settings.run_index_delay_s)
            deadline = time.monotonic() + grace
            while known is None and time.monotonic() < deadline:
                await asyncio.sleep(step)
                known = await asyncio.to_thread(self.find_run, body.trace_id)
        if known is None or known.caller != caller:
            # Feedback feeds mining and promotion: only the caller a run was served to may score it.
            raise NotFoundError(
                f"no run with trace id {body.trace_id} was served to this API key",
                hint="send the X-Trace-Id of a run this key made, within GEODE_SERVE_RUN_RETENTION_S",
            )
        if self.gate is not None:
            self.gate.keep(body.trace_id)
        record = FeedbackRecord(
            trace_id=body.trace_id,
            name=body.name,
            span_id=body.span_id or (known.span_id if known else None),
            score=body.score,
            label=body.label,
            explanation=body.explanation,
            annotator_kind=body.annotator_kind,
            program=known.program if known else None,
            version=known.version if known else None,
        )
        if self.outbox is not None:
            return await self._to_outbox(self.outbox, record)
        stored: list[str] = []
        problems: list[str] = []
        for sink in self.feedback_sinks:
            try:
                await asyncio.wait_for(
                    asyncio.to_thread(sink.send, record), self.settings.feedback_timeout_s + 1
                )
            except Exception as err:
                problems.append(f"{sink.name}: {type(err).__name__}")
                logger.warning("feedback for trace %s not stored in %s: %s", body.trace_id, sink.name, err)
                continue
            stored.append(sink.name)
            self.metrics.feedback(record.program or "unknown", record.version, sink.name)
        if not stored:
            raise ServiceUnavailableError(
                "the feedback could not be stored anywhere", hint="; ".join(problems)
            )
        return FeedbackOut(trace_id=body.trace_id, delivered=stored, problems=problems)

    async def _to_outbox(self, outbox: FeedbackOutbox, record: FeedbackRecord) -> FeedbackOut:
        try:
            receipt = await asyncio.to_thread(
                outbox.submit, record, timeout_s=self.settings.feedback_timeout_s
            )
        except OSError as err:
            # Only the local disk refusing the write gets here: then the feedback is nowhere.
            raise ServiceUnavailableError(
                "the feedback could not be stored", hint=f"the Geode home refused the write: {err}"
            ) from err
        delivered = ["local", "phoenix"] if receipt.delivered else ["local"]
        for target in delivered:
            self.metrics.feedback(record.program or "unknown", record.version, target)
        problems = [] if receipt.delivered or outbox.last_error is None else [f"phoenix: {outbox.last_error}"]
        return FeedbackOut(
            trace_id=record.trace_id,
            delivered=delivered,
            pending=[] if receipt.delivered else ["phoenix"],
            problems=problems,
        )

    async def drain(self) -> None:
        self.draining = True
        if self.background:
            await asyncio.wait(set(self.background), timeout=self.settings.shutdown_timeout_s)
        if self.runs is not None:
            # The runs answered last are written before the replica goes.
            await asyncio.to_thread(self.runs.close, self.settings.shutdown_timeout_s)
        for sink in self.feedback_sinks:
            close = getattr(sink, "close", None)
            if callable(close):
                with contextlib.suppress(Exception):
                    close()


def _default_sessions(settings: ServeSettings, state: SqlState | None) -> SessionStore:
    if settings.sessions == "state" and state is not None:
        from geode.runtime.state.sessions import SqlSessionStore

        return SqlSessionStore(state, ttl_s=settings.session_ttl_s, max_turns=settings.max_session_turns)
    return MemorySessionStore(
        max_sessions=settings.max_sessions, ttl_s=settings.session_ttl_s, max_turns=settings.max_session_turns
    )


def _pipeline_of(runtime: Runtime) -> TracingPipeline | None:
    # The runtime's export pipeline (for span-loss metrics), when it built one from settings.
    return runtime.export_pipeline


def _visible(call: _Call) -> dict[str, Any]:
    history = call.hosted.interface.history_field
    return {k: v for k, v in call.inputs.items() if k != history}


def _output_fields(predictor: Any) -> Mapping[str, Any]:
    signature = getattr(predictor, "signature", None)
    return getattr(signature, "output_fields", None) or {}


def _listeners(module: dspy.Module, outputs: Sequence[str]) -> list[dspy.streaming.StreamListener]:
    """Stream listeners for the output fields that one predictor of ``module`` produces."""
    predictors = list(module.named_predictors())
    listeners: list[dspy.streaming.StreamListener] = []
    for name in outputs:
        owners = [(pname, p) for pname, p in predictors if name in _output_fields(p)]
        if not owners:
            continue
        pname, predictor = owners[-1]
        # DSPy's own listener for DSPy's adapters, and it also reads SmallModelAdapter's replies.
        listeners.append(
            SmallModelStreamListener(signature_field_name=name, predict=predictor, predict_name=pname)
        )
    return listeners


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


def _validation_details(err: RequestValidationError) -> list[dict[str, Any]]:
    # Never echo the input back: it may be megabytes, or secret.
    details = []
    for item in err.errors()[:20]:
        details.append({"loc": [str(p) for p in item.get("loc", ())], "msg": str(item.get("msg", ""))[:300]})
    return details


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
    server = _Server(
        runtime,
        programs,
        serve,
        sessions=sessions,
        feedback_sinks=feedback_sinks,
        host=host or serve.host,
        tracer_provider=tracer_provider,
        tracing=tracing,
    )

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
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
        max_body_bytes=serve.max_body_bytes,
        max_json_depth=serve.max_json_depth,
    )
    # Outermost: the size limit's own refusals are marked too.
    app.add_middleware(NoSniffMiddleware)

    async def caller(request: Request) -> str:
        # One dependency reading the headers itself: FastAPI's security classes cost two more
        # dependency resolutions on every request. The OpenAPI document declares the same schemes.
        return server.caller(request)

    _declare_security(app)

    @app.exception_handler(GeodeError)
    async def _geode_error(request: Request, err: GeodeError) -> JSONResponse:
        return server.error_response(None, err, request.headers.get(REQUEST_HEADER))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        body = error_body(
            "invalid_input",
            _invalid_message(request.url.path),
            request_id=request.headers.get(REQUEST_HEADER),
            extra={"details": _validation_details(err)},
        )
        return JSONResponse(body, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized"}.get(
            err.status_code, "http_error"
        )
        return JSONResponse(error_body(code, str(err.detail)), status_code=err.status_code)

    @app.exception_handler(Exception)
    async def _internal(request: Request, err: Exception) -> JSONResponse:
        return server.error_response(None, err, request.headers.get(REQUEST_HEADER))

    _add_operation_routes(app, server, caller)
    for hosted in server.hosted.values():
        _add_program_routes(app, server, hosted, caller)
    return app


def _invalid_message(path: str) -> str:
    """What a body that fails validation should have matched, named after the endpoint's schema."""
    if path.rstrip("/").endswith("/feedback"):
        return (
            "the request does not match the feedback schema: trace_id (32 hex digits) and at least one "
            "of score, label, explanation; optional name, annotator_kind (HUMAN, LLM, CODE), span_id"
        )
    if path.startswith("/programs/"):
        return "the request does not match the program's inputs"
    return "the request does not match this endpoint's schema (see /docs)"


_SECURITY_SCHEMES: dict[str, Any] = {
    "HTTPBearer": {"type": "http", "scheme": "bearer", "description": "An API key (GEODE_SERVE_API_KEYS)."},
    "APIKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
}
_SECURED: dict[str, Any] = {"security": [{name: []} for name in _SECURITY_SCHEMES]}
"""``openapi_extra`` of every route that needs an API key (when the server has keys)."""


class ErrorDetail(BaseModel):
    """What went wrong: a stable ``code`` (see docs/serving.md), a message, and the request's ids."""

    model_config = {"extra": "allow"}  # code-specific fields: details, retry_after_s, hint...

    code: str
    message: str
    request_id: str | None = None
    trace_id: str | None = None


class ErrorOut(BaseModel):
    """Every error response's body."""

    error: ErrorDetail


_ERROR_DESCRIPTIONS: Final[Mapping[int, str]] = {
    400: "the body is not JSON",
    401: "missing or unknown API key",
    404: "not found",
    413: "body too large",
    422: "invalid input",
    429: "rate limited or out of token budget",
    502: "the LM or a tool failed",
    503: "overloaded, draining, or a dependency is down",
    504: "deadline exceeded",
}


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route: these statuses answer :class:`ErrorOut` (422 replaces FastAPI's own)."""
    return {status: {"model": ErrorOut, "description": _ERROR_DESCRIPTIONS[status]} for status in statuses}


# What any route behind the API key can answer besides its own result: the key is checked, the caller's
# rate limited, the body's size and depth checked, its fields validated.
_CALLER_ERRORS = (401, 413, 422, 429)


def _retry_after(err: BaseException) -> float | None:
    """Seconds the caller should wait before retrying, if the error (or its cause) says."""
    retry = retry_after_of(err) or retry_after_of(err.__cause__ or err)
    cause_retry = getattr(err.__cause__, "retry_after", None)
    if retry is None and isinstance(cause_retry, int | float):
        retry = float(cause_retry)
    return retry


def _declare_security(app: FastAPI) -> None:
    """Add the API-key schemes to the OpenAPI document (clients and /docs offer to send a key)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            schema.setdefault("components", {}).setdefault("securitySchemes", {}).update(_SECURITY_SCHEMES)
        assert app.openapi_schema is not None
        return app.openapi_schema

    app.openapi = openapi  # FastAPI's documented way to customise the document


def _add_operation_routes(app: FastAPI, server: _Server, caller: Callable[..., Any]) -> None:
    @app.get("/health", tags=["operations"])
    async def health() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/ready", tags=["operations"])
    async def ready() -> JSONResponse:
        """Readiness: programs loaded and not shutting down (503 while draining)."""
        programs_state = {}
        for hosted in server.hosted.values():
            served = server.served(hosted)
            split = [c for c in server.candidates(hosted, served) if c is not None]
            programs_state[hosted.name] = {
                "version": served.version or "base",
                "candidate": split[0].version if split else None,
                "problem": served.problem,
            }
        status = 503 if server.draining else 200
        return JSONResponse(
            {"status": "draining" if server.draining else "ready", "programs": programs_state}, status
        )

    @app.get("/metrics", tags=["operations"], response_class=Response)
    async def metrics() -> Response:
        """Prometheus metrics: requests, errors, latency, tokens and cost per program and version."""
        return Response(server.metrics.exposition(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/programs", tags=["programs"], responses=_errors(*_CALLER_ERRORS), openapi_extra=_SECURED)
    async def list_programs(_: str = Depends(caller)) -> list[dict[str, Any]]:
        """The hosted programs, their routes, fields and versions."""
        found = []
        for hosted in server.hosted.values():
            served = server.served(hosted)
            split = [
                {"version": c.version, "mode": c.mode, "share": c.share}
                for c in server.candidates(hosted, served)
                if c is not None
            ]
            found.append(
                {
                    "name": hosted.name,
                    "path": f"/programs/{hosted.route}",
                    "inputs": list(hosted.interface.input_names),
                    "outputs": list(hosted.interface.output_names),
                    "version": served.version or "base",
                    # The first candidate (kept for older clients), and every one.
                    "candidate": split[0] if split else None,
                    "candidates": split,
                }
            )
        return found

    @app.post(
        "/feedback",
        tags=["feedback"],
        response_model=FeedbackOut,
        status_code=202,
        responses=_errors(*_CALLER_ERRORS, 400, 404),
        openapi_extra=_SECURED,
    )
    async def feedback(body: FeedbackIn, who: str = Depends(caller)) -> FeedbackOut:
        """Record a score or label on a run served to this API key (a Phoenix annotation on its root span)."""
        return await server.feedback(body, who)

    @app.get(
        "/sessions/{session_id}",
        tags=["sessions"],
        responses=_errors(*_CALLER_ERRORS, 404),
        openapi_extra=_SECURED,
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
        responses=_errors(*_CALLER_ERRORS, 404),
        openapi_extra=_SECURED,
    )
    async def delete_session(session_id: str, who: str = Depends(caller)) -> Response:
        """Forget one of this API key's sessions."""
        server.sessions.delete(server.session_key(who, session_id))
        return Response(status_code=204)


def _add_program_routes(app: FastAPI, server: _Server, hosted: _Hosted, caller: Callable[..., Any]) -> None:
    error_responses = _errors(*_CALLER_ERRORS, 400, 404, 502, 503, 504)  # 404: a version not served

    async def run_json(request: Request, body: BaseModel, who: str) -> Response:
        call = await server.admit_and_begin(hosted, body, who, request)
        try:
            outcome: _Outcome | None = None
            try:
                outcome = await server.execute(call)
            except Exception as err:
                server.finish_span(call, None, err)
                code, _ = describe(err)
                server.account(call, None, status_for(code), code)
                return server.error_response(call, err)
        finally:
            server.run_slots.release()
        server.finish_span(call, outcome, None)
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
        return JSONResponse(payload, headers=server.headers(call))

    async def run_stream(request: Request, body: BaseModel, who: str) -> Response:
        # The slot is released when the run ends (in produce), not when the response starts.
        call = await server.admit_and_begin(hosted, body, who, request)
        queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=64)

        async def emit(item: Any) -> None:
            data = _stream_item(item)
            if data is not None:
                await queue.put(data)

        client_gone = asyncio.Event()

        async def produce() -> None:
            outcome: _Outcome | None = None
            try:
                outcome = await server.execute(call, stream=emit)
            except BaseException as err:
                if isinstance(err, asyncio.CancelledError) and client_gone.is_set():
                    # The client closed the stream: no server error (nginx's 499), not a request error;
                    # the trace says so too (a cancellation would read as internal_error).
                    server.finish_span(call, None, ClientClosedError("the client closed the stream mid-run"))
                    server.account(call, None, CLIENT_CLOSED_REQUEST, None)
                    raise
                server.finish_span(call, None, err)
                code, message = describe(err)
                server.account(call, None, status_for(code), code)
                if isinstance(err, asyncio.CancelledError):
                    raise
                await queue.put(
                    _sse(
                        "error",
                        error_body(
                            code,
                            message,
                            request_id=call.request_id,
                            trace_id=call.trace_id,
                            # A stream's status and headers are sent: the retry hint travels in the event.
                            extra={"retry_after_s": retry}
                            if (retry := _retry_after(err)) is not None
                            else None,
                        ),
                    )
                )
            else:
                server.finish_span(call, outcome, None)
                server.account(call, outcome, 200, None)
                server.after_success(call, outcome)
                await queue.put(
                    _sse(
                        "prediction",
                        {
                            "program": hosted.name,
                            "version": call.version or "base",
                            "outputs": outcome.outputs,
                            "trace_id": call.trace_id,
                            "session_id": call.session_id,
                        },
                    )
                )
            finally:
                server.run_slots.release()
                with contextlib.suppress(asyncio.QueueFull):
                    queue.put_nowait(None)

        task = asyncio.get_running_loop().create_task(produce())

        async def events() -> AsyncIterator[bytes]:
            try:
                while (item := await queue.get()) is not None:
                    yield item
                yield b"event: done\ndata: {}\n\n"
            finally:
                # The client went away (or we are done): stop the run; its span ends in produce().
                if not task.done():
                    client_gone.set()
                    task.cancel()
                    with contextlib.suppress(BaseException):
                        await task

        headers = {**server.headers(call), "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(events(), media_type="text/event-stream", headers=headers)

    for suffix, handler, summary in (
        ("", run_json, f"Run {hosted.name}"),
        ("/stream", run_stream, f"Run {hosted.name}, streaming output fields as server-sent events"),
    ):
        endpoint = _endpoint(handler, hosted.request_model, caller)
        app.add_api_route(
            f"/programs/{hosted.route}{suffix}",
            endpoint,
            methods=["POST"],
            tags=["programs"],
            summary=summary,
            description=hosted.interface.instructions or "",
            response_model=hosted.response_model if not suffix else None,
            response_class=JSONResponse if not suffix else StreamingResponse,
            responses=error_responses,
            operation_id=f"run_{hosted.route.replace('.', '_').replace('-', '_')}{suffix.replace('/', '_')}",
            openapi_extra=_SECURED,
        )


def _endpoint(
    handler: Callable[[Request, BaseModel, str], Awaitable[Response]],
    model: type[BaseModel],
    caller: Callable[..., Any],
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


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("geode")
    except PackageNotFoundError:
        return "0"
