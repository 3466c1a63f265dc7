"""Geode's DSPy instrumentation: every module, LM, tool, retrieval and evaluation call as a span.

:func:`instrument` registers one :class:`GeodeCallback` (DSPy's public callback API) with DSPy's
process-wide callbacks, so every DSPy program in the process is traced, and makes thread pools carry
the trace context. :class:`~geode.runtime.runtime.Runtime` calls it for you; call it yourself to trace
DSPy programs you run without a runtime.

Example:
    >>> import dspy, geode
    >>> from geode.testing import ScriptedLM, in_memory_tracing
    >>> provider, exporter = in_memory_tracing()
    >>> geode.instrument(tracer_provider=provider)
    >>> with dspy.context(lm=ScriptedLM([{"answer": "4"}])):
    ...     _ = dspy.Predict("question -> answer")(question="2+2?")
    >>> sorted(span.name for span in exporter.get_finished_spans())
    ['Predict', 'scripted']
    >>> geode.uninstrument()
"""

from __future__ import annotations

import importlib
import logging
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Tracer, TracerProvider

from geode.runtime.instrumentation import _dispatch, _propagation
from geode.runtime.instrumentation._callback import SCOPED_TRACER, GeodeCallback

__all__ = [
    "GeodeCallback",
    "active_callback",
    "instrument",
    "is_instrumented",
    "release",
    "retain",
    "tracing_to",
    "uninstrument",
    "with_callback",
]

logger = logging.getLogger("geode.instrumentation")

_SCOPE = "geode"
_lock = threading.Lock()
_active: GeodeCallback | None = None
_provider: TracerProvider | None = None
_by_runtimes = False
"""Instrumentation was started by :func:`retain` (a runtime), not by :func:`instrument`."""
_retained: list[TracerProvider] = []


def _dspy_config() -> Any:
    # DSPy's process-wide settings dict. Writing it directly (instead of `dspy.configure`) keeps
    # instrumentation from claiming DSPy's "configure owner" thread, which would make the
    # application's own later `dspy.configure` call fail from any other thread.
    return importlib.import_module("dspy.dsp.utils.settings").main_thread_config


def _register(callback: GeodeCallback) -> None:
    config = _dspy_config()
    current = [cb for cb in (config.get("callbacks") or []) if not isinstance(cb, GeodeCallback)]
    config["callbacks"] = [*current, callback]


def _unregister() -> None:
    config = _dspy_config()
    config["callbacks"] = [cb for cb in (config.get("callbacks") or []) if not isinstance(cb, GeodeCallback)]


def _warn_if_openinference_dspy_active() -> None:
    # Not imported means not instrumenting; importing it just to ask would cost 0.1-0.2 s of start-up.
    module = sys.modules.get("openinference.instrumentation.dspy")
    DSPyInstrumentor = getattr(module, "DSPyInstrumentor", None)
    if DSPyInstrumentor is None:
        return
    try:
        active = bool(DSPyInstrumentor().is_instrumented_by_opentelemetry)
    except Exception:
        return
    if active:
        logger.warning(
            "openinference-instrumentation-dspy is also instrumenting DSPy: every call will be traced "
            "twice; call DSPyInstrumentor().uninstrument() to keep only Geode's spans"
        )


def _instrument_locked(provider: TracerProvider) -> None:
    global _active, _provider
    from geode import __version__

    if _active is None:
        _active = GeodeCallback(provider.get_tracer(_SCOPE, __version__))
        _warn_if_openinference_dspy_active()
    elif provider is not _provider:
        _active.tracer = provider.get_tracer(_SCOPE, __version__)
    _provider = provider
    _register(_active)
    _propagation.install()
    _dispatch.install()


def _uninstrument_locked() -> None:
    global _active, _provider, _by_runtimes
    _unregister()
    _propagation.uninstall()
    _dispatch.uninstall()
    _active = None
    _provider = None
    _by_runtimes = False


def instrument(tracer_provider: TracerProvider | None = None) -> None:
    """Trace every DSPy program in this process (idempotent).

    Args:
        tracer_provider: Where spans go; default: OpenTelemetry's global tracer provider. Calling
            again with another provider moves instrumentation to it.
    """
    global _by_runtimes
    provider = tracer_provider if tracer_provider is not None else trace.get_tracer_provider()
    with _lock:
        _instrument_locked(provider)
        _by_runtimes = False


def uninstrument() -> None:
    """Stop tracing DSPy programs and restore thread pools (idempotent)."""
    with _lock:
        _uninstrument_locked()


def retain(provider: TracerProvider) -> None:
    """Instrument for a runtime that sends its calls' spans to ``provider``.

    If nothing is instrumented yet, DSPy calls made outside any runtime go to ``provider`` too; an
    explicit :func:`instrument` always wins. Pair with :func:`release`.
    """
    global _by_runtimes
    with _lock:
        _retained.append(provider)
        if _active is None:
            _instrument_locked(provider)
            _by_runtimes = True


def release(provider: TracerProvider) -> None:
    """Undo one :func:`retain`: instrumentation started by runtimes ends with the last of them."""
    with _lock:
        if provider in _retained:
            _retained.remove(provider)
        if not _by_runtimes or _provider is not provider:
            return
        if _retained:
            _instrument_locked(_retained[-1])
        else:
            _uninstrument_locked()


@contextmanager
def tracing_to(tracer: Tracer) -> Iterator[None]:
    """Send the spans of DSPy calls made in this block (and their worker threads) to ``tracer``.

    The runtime wraps each call in this, so two runtimes with different tracer providers in one
    process each get their own calls' spans.
    """
    token = SCOPED_TRACER.set(tracer)
    try:
        yield
    finally:
        SCOPED_TRACER.reset(token)


def is_instrumented() -> bool:
    """Whether :func:`instrument` is in effect."""
    return _active is not None


def active_callback() -> GeodeCallback | None:
    """The registered callback, if instrumented."""
    return _active


def with_callback(callbacks: Sequence[Any] | None) -> list[Any]:
    """``callbacks`` plus Geode's callback when instrumented and missing.

    ``dspy.context(callbacks=[...])`` replaces DSPy's process-wide callbacks for its block; the runtime
    passes its per-call callbacks through this so Geode's spans survive such overrides.
    """
    result = list(callbacks or [])
    callback = _active
    if callback is not None and not any(cb is callback for cb in result):
        result.append(callback)
    return result
