"""Stop a served run's LM calls once its request has been answered with 504.

A sync program runs in a worker thread, and a thread cannot be stopped from outside: after the request
times out, the program would go on calling the LM for nobody. Each run gets an
:class:`Abandonment` in its context (copied into the worker thread); when the request gives up on the
run it sets it, and :class:`AbandonedRunGuard`, a DSPy callback placed first, raises
:class:`RunAbandoned` at the run's next LM call, before the call is made or any span opens.

:class:`RunAbandoned` derives from ``BaseException``, as ``asyncio.CancelledError`` does: DSPy's
callback dispatcher and programs' own ``except Exception`` handlers (a tool's, an agent's) let it
through, so the run unwinds instead of carrying on with a fallback.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from dspy.utils.callback import BaseCallback

__all__ = ["AbandonedRunGuard", "Abandonment", "RunAbandoned", "abandonment"]


class RunAbandoned(BaseException):
    """Raised inside a run whose request has already been answered: it must make no further LM call."""


class Abandonment:
    """Set once the run's request has been answered (with 504); read from the run's threads."""

    __slots__ = ("_set",)

    def __init__(self) -> None:
        # A plain flag, not a threading.Event (a lock and a condition built on every request): nobody
        # waits on it, and one attribute write is seen by the run's threads at their next read.
        self._set = False

    def set(self) -> None:
        """Tell the run to stop at its next LM call."""
        self._set = True

    @property
    def is_set(self) -> bool:
        """Whether the run has been abandoned."""
        return self._set


_CURRENT: contextvars.ContextVar[Abandonment | None] = contextvars.ContextVar(
    "geode_run_abandonment", default=None
)


@contextmanager
def abandonment(flag: Abandonment) -> Iterator[Abandonment]:
    """Put ``flag`` in the context of the run started inside (worker threads copy the context)."""
    token = _CURRENT.set(flag)
    try:
        yield flag
    finally:
        _CURRENT.reset(token)


class AbandonedRunGuard(BaseCallback):
    """A DSPy callback that raises :class:`RunAbandoned` when an abandoned run starts an LM call."""

    def on_lm_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        """Refuse the LM call of an abandoned run."""
        flag = _CURRENT.get()
        if flag is not None and flag.is_set:
            raise RunAbandoned("the request was answered (deadline exceeded); no further LM calls")
