"""The server's state, shared by every route: what it hosts, who may call, and what it has answered.

:class:`Server` holds the API keys and quotas, the run slots (``max_in_flight``) and the shadow slots,
the session store, the served-run index (so feedback for a run is accepted by any replica), the
metrics, the feedback targets and the trace gate. Its per-request steps admit a caller, begin a call
(version choice, inputs, root span), account for it and, after an answer, remember the run, append the
session turn and start the shadow run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import dspy
from fastapi import Request
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider as SDKTracerProvider
from opentelemetry.trace import Link
from pydantic import BaseModel

from geode.errors import GeodeError, InputError
from geode.runtime.feedback_sinks import FeedbackSink
from geode.runtime.programs import ProgramRef
from geode.runtime.registry import RoutedVersion
from geode.runtime.runtime import Runtime
from geode.runtime.serving.abandon import AbandonedRunGuard
from geode.runtime.serving.calls import REQUEST_HEADER, Call, Outcome, RecentRun, hex_trace, jsonable
from geode.runtime.serving.errors import OverloadedError, ServiceUnavailableError, describe, status_for
from geode.runtime.serving.execution import execute
from geode.runtime.serving.guard import ApiKeys, Quotas
from geode.runtime.serving.hosting import Hosted, HostedProgram, choose, host
from geode.runtime.serving.metrics import ServerMetrics
from geode.runtime.serving.sampling import TraceGate, install_trace_gate
from geode.runtime.serving.sessions import MemorySessionStore, SessionStore, Turn
from geode.runtime.serving.spans import finish_span, start_span
from geode.runtime.serving.traffic import Candidate, in_share
from geode.runtime.settings import ServeSettings
from geode.runtime.state import RunRecorder, ServedRun, SqlRunIndex, SqlState
from geode.runtime.tracing import TracingPipeline

if TYPE_CHECKING:
    # For types only: the outbox's module (Phoenix and mining readers) loads when the runtime builds one.
    from geode.runtime.feedback import FeedbackOutbox

__all__ = ["Server"]

logger = logging.getLogger("geode.serve")

_SCOPE = "geode.serve"


class Server:
    """The state one app's routes share; ``app.state.geode`` holds it.

    Args:
        runtime: Runs the programs.
        programs: What to host (references, modules or :class:`HostedProgram` specs).
        settings: The server settings.
        sessions: Where sessions live; None: from the settings.
        feedback_sinks: Where feedback goes, each tried once; None: the runtime's durable outbox.
        host: The address the server binds (decides whether running without API keys is allowed).
        tracer_provider: Where the request spans go; None: ``tracing``'s, the runtime's or the global one.
        tracing: The export pipeline whose losses the metrics report; None: the runtime's.

    Raises:
        GeodeError: Two programs would be served at the same route.
    """

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
        self.tracing: TracingPipeline | None = tracing or runtime.export_pipeline
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
        self.recent: OrderedDict[str, RecentRun] = OrderedDict()
        self.hosted: dict[str, Hosted] = self._host_all(programs)
        self.draining = False
        self.background: set[asyncio.Task[None]] = set()
        self.shadow_slots = asyncio.Semaphore(settings.shadow_max_in_flight)
        self.run_slots = asyncio.Semaphore(settings.max_in_flight)
        self.guard = AbandonedRunGuard()
        self.gate: TraceGate | None = None
        ratios = {h.name: h.sample_ratio for h in self.hosted.values() if h.sample_ratio is not None}
        if isinstance(provider, SDKTracerProvider) and (ratios or settings.trace_sample_ratio < 1.0):
            self.gate = install_trace_gate(
                provider, ratios, settings.trace_sample_ratio, hold_s=settings.feedback_hold_s
            )

    # -- set-up --------------------------------------------------------------------------------

    def _host_all(self, programs: Sequence[ProgramRef | HostedProgram]) -> dict[str, Hosted]:
        hosted_by_route: dict[str, Hosted] = {}
        for spec in programs:
            hosted = host(
                self.runtime, spec if isinstance(spec, HostedProgram) else HostedProgram(spec), self.settings
            )
            if hosted.route in hosted_by_route:
                raise GeodeError(
                    f"two programs would be served at /programs/{hosted.route}", hint="serve them as NAME=REF"
                )
            hosted_by_route[hosted.route] = hosted
        return hosted_by_route

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
        if not self.run_slots.locked():
            # A free slot is taken without waiting: no timeout to arm (and cancel) on every request.
            await self.run_slots.acquire()
            return
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

    async def admit_and_begin(self, hosted: Hosted, body: BaseModel, caller: str, request: Request) -> Call:
        """:meth:`admit`, then :meth:`begin`; the slot is given back if the call cannot begin.

        The caller releases the slot (``run_slots``) when the run ends.
        """
        await self.admit()
        try:
            return self.begin(hosted, body, caller, request)
        except BaseException:
            self.run_slots.release()
            raise

    def inputs_of(self, hosted: Hosted, body: BaseModel, session_key: str | None) -> dict[str, Any]:
        """The program's inputs from the body, with the session's turns as its history field."""
        inputs = {name: getattr(body, name) for name in hosted.interface.input_names}
        inputs = {k: v for k, v in inputs.items() if v is not None or k in body.model_fields_set}
        if hosted.interface.history_field is not None:
            turns = self.sessions.turns(session_key) if session_key else ()
            inputs[hosted.interface.history_field] = dspy.History(messages=[t.message() for t in turns])
        return inputs

    def begin(self, hosted: Hosted, body: BaseModel, caller: str, request: Request) -> Call:
        """Start one request's call: the version that answers, its inputs and LM options, its root span."""
        # Not `secrets`: os.urandom is a syscall, and giving up the GIL there costs up to a switch
        # interval (5 ms) whenever the span-export thread is busy. Request ids need not be secret.
        request_id = request.headers.get(REQUEST_HEADER) or format(random.getrandbits(64), "016x")
        request_id = request_id[:64]
        session_id: str | None = getattr(body, "session_id", None)
        module, version, role, shadow = choose(
            self.runtime, hosted, getattr(body, "version", None), session_id or request_id
        )
        call = Call(
            hosted=hosted,
            module=module,
            version=version,
            role=role,
            inputs=self.inputs_of(hosted, body, self.session_key(caller, session_id) if session_id else None),
            session_id=session_id,
            user_id=getattr(body, "user_id", None),
            request_id=request_id,
            caller=caller,
            lm_overrides=self._lm_overrides(getattr(body, "options", None)),
            shadow=shadow,
        )
        call.span = start_span(self.tracer, call)
        call.trace_id = hex_trace(call.span)
        self.metrics.started()
        return call

    def _lm_overrides(self, options: BaseModel | None) -> dict[str, Any]:
        # The request's LM options (temperature, max_tokens...), within the operator's token limit.
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
        return overrides

    def remember(self, call: Call) -> None:
        """Record an answered run, so feedback on it is accepted (here and on every replica)."""
        if call.span is None or call.trace_id is None:
            return
        span_id = format(call.span.get_span_context().span_id, "016x")
        self.recent[call.trace_id] = RecentRun(span_id, call.hosted.name, call.version, call.caller)
        while len(self.recent) > self.settings.max_recent_runs:
            self.recent.popitem(last=False)
        if self.runs is not None:
            try:
                self.runs.remember(
                    ServedRun(call.trace_id, span_id, call.hosted.name, call.version, call.caller)
                )
            except Exception as err:  # the answer is made: feedback then reaches this replica only
                logger.warning("run %s not recorded in the state database: %s", call.trace_id, err)

    def find_run(self, trace_id: str) -> RecentRun | None:
        """A run served by this replica, or by any replica on the state database."""
        known = self.recent.get(trace_id)
        if known is None and self.runs is not None:
            run = self.runs.find(trace_id)
            if run is not None:
                known = RecentRun(run.span_id, run.program, run.version, run.caller)
        return known

    def account(self, call: Call, outcome: Outcome | None, status: int, code: str | None) -> None:
        """Count the finished call in the metrics and charge its tokens to the caller's budget."""
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

    def after_success(self, call: Call, outcome: Outcome) -> None:
        """Remember the run, append the session's turn, and start the shadow run if it is in share."""
        self.remember(call)
        if call.session_id:
            visible = {
                k: jsonable(v) for k, v in call.inputs.items() if k != call.hosted.interface.history_field
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

    def shadow(self, primary: Call, candidate: Candidate | RoutedVersion) -> None:
        """Run ``candidate`` on a copy of the primary's call in the background (skipped when all slots are busy)."""
        if self.shadow_slots.locked():
            self.metrics.shadow(primary.hosted.name, "skipped")
            return
        call = Call(
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
        link = [Link(primary.span.get_span_context())] if primary.span is not None else []
        task = asyncio.get_running_loop().create_task(self._run_shadow(call, link))
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    async def _run_shadow(self, call: Call, link: list[Link]) -> None:
        async with self.shadow_slots:
            call.span = start_span(self.tracer, call, link)
            call.trace_id = hex_trace(call.span)
            self.metrics.started()
            outcome: Outcome | None = None
            try:
                outcome = await execute(call, self.runtime, self.guard, self.settings.request_timeout_s)
            except Exception as err:
                finish_span(call, None, err)
                code, _ = describe(err)
                self.account(call, None, status_for(code), code)
                self.metrics.shadow(call.hosted.name, "error")
                return
            finish_span(call, outcome, None)
            self.remember(call)
            self.account(call, outcome, 200, None)
            self.metrics.shadow(call.hosted.name, "ok")

    async def drain(self) -> None:
        """Stop admitting, let shadow runs finish, write the run index, close the feedback sinks."""
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
