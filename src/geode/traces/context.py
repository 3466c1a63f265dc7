"""Who is running: the identity the runtime puts in context and instrumentation stamps on spans.

The runtime sets a :class:`RunIdentity` for each call; span writers read it with :func:`current_run`.
It lives in ``traces`` so writers (the runtime's instrumentation) and readers (mining, crystallization)
share one definition without depending on each other.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

__all__ = ["RunIdentity", "current_run", "run_identity"]


@dataclass(frozen=True)
class RunIdentity:
    """The program and caller a span belongs to."""

    program: str
    """The program's reference (``module:attr``) or registered name: ``geode.program.name``."""
    version: str | None = None
    """The program version that answered (a content hash), ``geode.program.version``."""
    session_id: str | None = None
    user_id: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict[str, Any])
    tags: tuple[str, ...] = ()
    kind: str | None = None
    """``agent`` or ``workflow`` when known."""


_CURRENT: contextvars.ContextVar[RunIdentity | None] = contextvars.ContextVar("geode_run", default=None)


def current_run() -> RunIdentity | None:
    """The identity of the run in progress in this context, if any."""
    return _CURRENT.get()


@contextmanager
def run_identity(identity: RunIdentity) -> Iterator[RunIdentity]:
    """Set the run identity for the duration of a block (nested calls see the innermost)."""
    token = _CURRENT.set(identity)
    try:
        yield identity
    finally:
        _CURRENT.reset(token)
