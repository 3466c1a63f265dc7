"""Export state that a forked child renews: its own worker thread, locks, queue and connections.

A server that builds its runtime and then forks workers (``gunicorn --preload``, or any
``os.fork``) hands each child a copy of the export processor whose worker thread does not exist
there, whose locks may have been held by that thread at the fork, whose queue holds the parent's
spans (the parent exports them; a child would send them again) and whose HTTP client holds the
parent's keep-alive connections (two processes writing one socket). Each such object registers
here; right after a fork, in the child, each renews itself (as the OpenTelemetry SDK's batch
processor does with ``os.register_at_fork``).
"""

from __future__ import annotations

import logging
import os
import weakref
from typing import Protocol

__all__ = ["renew_after_fork"]

logger = logging.getLogger("geode.tracing")


class _Renewable(Protocol):
    def _after_fork_in_child(self) -> None: ...


_objects: weakref.WeakSet[_Renewable] = weakref.WeakSet()


def renew_after_fork(obj: _Renewable) -> None:
    """Call ``obj._after_fork_in_child()`` in every child forked while ``obj`` lives (held weakly)."""
    _objects.add(obj)


def _renew_all() -> None:
    for obj in list(_objects):
        try:
            obj._after_fork_in_child()
        except Exception:  # a child must start even if one exporter cannot renew itself
            logger.debug("renewing %r after fork failed", obj, exc_info=True)


if hasattr(os, "register_at_fork"):  # not on Windows, which cannot fork
    os.register_at_fork(after_in_child=_renew_all)
