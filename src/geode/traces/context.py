"""Who is running: the identity the runtime puts in context and instrumentation stamps on spans.

The runtime sets a :class:`RunIdentity` for each call; span writers read it with :func:`current_run`.
It lives in ``traces`` so writers (the runtime's instrumentation) and readers (mining, crystallization)
share one definition without depending on each other.
"""

from __future__ import annotations

import contextvars
from collections.abc import Generator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

__all__ = ["RunIdentity", "capture_trace_ids", "current_run", "note_trace_id", "run_identity"]


@dataclass(frozen=True)
class RunIdentity:
    """The program and caller a span belongs to."""

    program: str
    """The program's name: ``geode.program.name`` (see :func:`geode.runtime.programs.resolve`)."""
    version: str | None = None
    """The program version that answered (a content hash), ``geode.program.version``."""
    session_id: str | None = None
    user_id: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict[str, Any])
    tags: tuple[str, ...] = ()
    kind: str | None = None
    """``agent`` or ``workflow`` when known."""
    aliases: tuple[str, ...] = ()
    """Other names of the same program (the reference it was run by, its class name):
    ``geode.program.aliases``; trace filters accept any of them."""


_CURRENT: contextvars.ContextVar[RunIdentity | None] = contextvars.ContextVar("geode_run", default=None)


def current_run() -> RunIdentity | None:
    """The identity of the run in progress in this context, if any."""
    return _CURRENT.get()


@contextmanager
def run_identity(identity: RunIdentity) -> Generator[RunIdentity, None, None]:
    """Set the run identity for the duration of a block (nested calls see the innermost)."""
    token = _CURRENT.set(identity)
    try:
        yield identity
    finally:
        _CURRENT.reset(token)


_TRACE_IDS: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("geode_trace_ids", default=None)


@contextmanager
def capture_trace_ids() -> Generator[list[str], None, None]:
    """Collect the trace ids of the top-level spans a block starts (hex, 32 digits), in order.

    The runtime wraps each run in this so it can hand the caller the run's trace id; span writers call
    :func:`note_trace_id` when they open a span with no parent of their own.
    """
    ids: list[str] = []
    token = _TRACE_IDS.set(ids)
    try:
        yield ids
    finally:
        _TRACE_IDS.reset(token)


def note_trace_id(trace_id: str) -> None:
    """Record a top-level span's trace id for the enclosing :func:`capture_trace_ids`, if any."""
    ids = _TRACE_IDS.get()
    if ids is not None and trace_id not in ids:
        ids.append(trace_id)
