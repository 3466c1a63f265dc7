"""``dspy.configure`` belongs to the server: a served program that calls it gets a clear error.

``dspy.configure`` changes DSPy's settings for every thread and task that has no ``dspy.context`` of
its own, so a program calling it inside a request would change the next requests' adapter,
callbacks or usage tracking. DSPy lets only the thread that first called ``configure`` call it
again (and, in that thread, only the first async task). Nothing in Geode calls it, so without a
claim the first request to call it would own DSPy's settings and succeed.

:func:`claim_dspy_configure` makes a parked thread of the server the owner: every later call, from a
request's worker thread or from an async task on the event loop, raises DSPy's ``RuntimeError``
before changing anything, and :func:`configure_refused` lets the server answer it as
``program_configures_dspy`` (500) instead of an anonymous ``internal_error``.
"""

from __future__ import annotations

import logging
import threading

import dspy

__all__ = ["claim_dspy_configure", "configure_refused"]

logger = logging.getLogger(__name__)

_CLAIM_LOCK = threading.Lock()
_owner: threading.Thread | None = None
_parked = threading.Event()  # never set: the owner stays alive, so its thread id is never reused

_REFUSALS = (
    "dspy.settings can only be changed by the thread that initially configured it",
    "can only be called from the same async task",
)


def claim_dspy_configure() -> bool:
    """Make a parked thread the owner of ``dspy.configure`` for this process (idempotent).

    Call it where the process is a server (``geode serve`` does); an application that embeds
    :func:`~geode.runtime.serving.create_app` and configures DSPy itself keeps that ownership.

    Returns:
        True if this process's ``dspy.configure`` is now owned by Geode's parked thread; False when
        another thread already owned it (it stays that thread's).
    """
    global _owner
    with _CLAIM_LOCK:
        if _owner is not None:
            return True
        claimed = threading.Event()
        outcome: list[bool] = []

        def own() -> None:
            try:
                dspy.configure()  # noqa: TID251  (no settings: only the ownership changes)
                outcome.append(True)
            except RuntimeError as err:
                logger.debug("dspy.configure already owned by another thread: %s", err)
                outcome.append(False)
            claimed.set()
            if outcome[0]:
                _parked.wait()

        thread = threading.Thread(target=own, name="geode-dspy-configure-owner", daemon=True)
        thread.start()
        claimed.wait()
        if outcome[0]:
            _owner = thread
        return outcome[0]


def configure_refused(err: BaseException) -> bool:
    """Whether ``err`` is DSPy refusing a ``dspy.configure`` call (from a request, here)."""
    return isinstance(err, RuntimeError) and any(text in str(err) for text in _REFUSALS)
