"""Conversation state for ``session_id``: the turns a multi-turn program sees as its history.

:class:`SessionStore` is the interface; :class:`MemorySessionStore` keeps sessions in this process,
bounded in count (least recently used go first), in age (idle sessions expire) and in turns per session
(oldest turns go first). A multi-replica deployment needs sticky sessions or a shared store behind the
same interface.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

__all__ = ["MemorySessionStore", "SessionStore", "Turn"]


@dataclass(frozen=True)
class Turn:
    """One request and answer in a session."""

    inputs: Mapping[str, Any]
    outputs: Mapping[str, Any]
    trace_id: str | None = None
    version: str | None = None
    at: float = field(default_factory=time.time)

    def message(self) -> dict[str, Any]:
        """The turn as one ``dspy.History`` message: inputs and outputs side by side."""
        return {**self.inputs, **self.outputs}


@runtime_checkable
class SessionStore(Protocol):
    """Where sessions live. Implementations must be safe to call from many requests at once."""

    def turns(self, session_id: str) -> Sequence[Turn]:
        """The session's turns, oldest first (empty for an unknown or expired session)."""
        ...

    def append(self, session_id: str, turn: Turn) -> None:
        """Add a turn at the end of the session (creating it)."""
        ...

    def delete(self, session_id: str) -> bool:
        """Forget a session; ``True`` if it existed."""
        ...


class MemorySessionStore:
    """An in-process :class:`SessionStore`, bounded in sessions, age and turns.

    Args:
        max_sessions: Sessions kept; the least recently used one is evicted beyond it.
        ttl_s: A session unused for this long is forgotten.
        max_turns: Turns kept per session; older ones are dropped.
        clock: Monotonic clock (for tests).

    Example:
        >>> store = MemorySessionStore(max_sessions=2, ttl_s=60, max_turns=2)
        >>> for n in range(3):
        ...     store.append("s", Turn({"q": n}, {"a": n}))
        >>> [t.inputs["q"] for t in store.turns("s")]
        [1, 2]
    """

    def __init__(
        self,
        *,
        max_sessions: int = 10_000,
        ttl_s: float = 3600.0,
        max_turns: int = 20,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_sessions < 1 or max_turns < 1 or ttl_s <= 0:
            raise ValueError("max_sessions and max_turns must be >= 1 and ttl_s > 0")
        self.max_sessions = max_sessions
        self.ttl_s = ttl_s
        self.max_turns = max_turns
        self._clock = clock
        self._lock = threading.Lock()
        self._sessions: OrderedDict[str, tuple[float, list[Turn]]] = OrderedDict()
        self.evicted = 0
        """Sessions dropped because the store was full."""

    def __len__(self) -> int:
        with self._lock:
            self._expire(self._clock())
            return len(self._sessions)

    def _expire(self, now: float) -> None:
        # Oldest-used first: stop at the first live session.
        while self._sessions:
            key, (touched, _) = next(iter(self._sessions.items()))
            if now - touched < self.ttl_s:
                break
            del self._sessions[key]

    def turns(self, session_id: str) -> Sequence[Turn]:
        """The session's turns, oldest first."""
        with self._lock:
            now = self._clock()
            self._expire(now)
            entry = self._sessions.get(session_id)
            if entry is None:
                return ()
            self._sessions[session_id] = (now, entry[1])
            self._sessions.move_to_end(session_id)
            return tuple(entry[1])

    def append(self, session_id: str, turn: Turn) -> None:
        """Add a turn, evicting the least recently used session if the store is full."""
        with self._lock:
            now = self._clock()
            self._expire(now)
            entry = self._sessions.pop(session_id, None)
            turns = entry[1] if entry is not None else []
            turns.append(turn)
            del turns[: max(0, len(turns) - self.max_turns)]
            self._sessions[session_id] = (now, turns)
            while len(self._sessions) > self.max_sessions:
                self._sessions.popitem(last=False)
                self.evicted += 1

    def delete(self, session_id: str) -> bool:
        """Forget a session."""
        with self._lock:
            return self._sessions.pop(session_id, None) is not None
