"""Carry the trace context into thread pools, so one request stays one trace.

``ThreadPoolExecutor`` workers start from an empty context: spans opened there would start new
traces and lose the run identity. While Geode is instrumented, ``ThreadPoolExecutor.submit`` wraps
each task with the submitting thread's OpenTelemetry context, Geode run identity, the runtime's
tracer and DSPy's ``ACTIVE_CALL_ID`` (nothing else: DSPy's own settings keep DSPy's rules). This covers user thread
pools and ``loop.run_in_executor``; ``dspy.Parallel``, ``Module.batch`` and ``Evaluate`` are covered
even without it, because DSPy binds ``ACTIVE_CALL_ID`` into their workers. ``asyncio``/``anyio``
worker threads (``dspy.asyncify``) copy the whole context already.
"""

from __future__ import annotations

import contextvars
import functools
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextvars import ContextVar
from typing import Any, cast

from dspy.utils.callback_context import ACTIVE_CALL_ID
from opentelemetry import context as otel_context
from opentelemetry.trace import Tracer

from geode.runtime.instrumentation._callback import SCOPED_TRACER
from geode.traces.context import RunIdentity, current_run, run_identity

__all__ = ["install", "installed", "uninstall"]

_ACTIVE_CALL: ContextVar[str | None] = cast("ContextVar[str | None]", ACTIVE_CALL_ID)
_lock = threading.Lock()
_original_submit: Callable[..., Future[Any]] | None = None


class _Carried:
    """A task bound to the trace context of the thread that submitted it."""

    __slots__ = ("call_id", "context", "fn", "identity", "tracer")

    def __init__(
        self,
        fn: Callable[..., Any],
        context: otel_context.Context,
        identity: RunIdentity | None,
        call_id: str | None,
        tracer: Tracer | None,
    ) -> None:
        self.fn = fn
        self.context = context
        self.identity = identity
        self.call_id = call_id
        self.tracer = tracer

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        token = otel_context.attach(self.context)
        call_token = _ACTIVE_CALL.set(self.call_id)
        tracer_token = SCOPED_TRACER.set(self.tracer)
        try:
            if self.identity is None:
                return self.fn(*args, **kwargs)
            with run_identity(self.identity):
                return self.fn(*args, **kwargs)
        finally:
            SCOPED_TRACER.reset(tracer_token)
            _ACTIVE_CALL.reset(call_token)
            otel_context.detach(token)


def _runs_in_a_copied_context(fn: Callable[..., Any]) -> bool:
    """Whether ``fn`` is ``functools.partial(context.run, ...)``, as ``asyncio.to_thread`` submits it.

    Such a task already runs in a copy of the submitter's whole context (OpenTelemetry's, the run
    identity, the tracer and DSPy's call id are context variables), so wrapping it again would only
    redo the same work.
    """
    if not isinstance(fn, functools.partial):
        return False
    bound: Any = fn.func
    return (
        type(getattr(bound, "__self__", None)) is contextvars.Context
        and getattr(bound, "__name__", "") == "run"
    )


def _submit(self: ThreadPoolExecutor, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
    original = _original_submit
    assert original is not None
    if _runs_in_a_copied_context(fn):
        return original(self, fn, *args, **kwargs)
    context = otel_context.get_current()
    identity = current_run()
    call_id = _ACTIVE_CALL.get()
    tracer = SCOPED_TRACER.get()
    if context or identity is not None or call_id is not None or tracer is not None:
        fn = _Carried(fn, context, identity, call_id, tracer)
    return original(self, fn, *args, **kwargs)


def install() -> None:
    """Wrap ``ThreadPoolExecutor.submit`` (idempotent)."""
    global _original_submit
    with _lock:
        if _original_submit is not None:
            return
        _original_submit = ThreadPoolExecutor.submit
        ThreadPoolExecutor.submit = _submit


def uninstall() -> None:
    """Restore ``ThreadPoolExecutor.submit``."""
    global _original_submit
    with _lock:
        if _original_submit is None:
            return
        ThreadPoolExecutor.submit = _original_submit
        _original_submit = None


def installed() -> bool:
    """Whether thread pools currently carry the trace context."""
    return _original_submit is not None
