"""Sessions in the state database: every replica and process on it sees the same conversations."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa

from geode.runtime.serving.sessions import Turn
from geode.runtime.state.backend import SqlState
from geode.runtime.state.schema import tables

__all__ = ["SqlSessionStore"]

_T = tables.sessions


def _turn_json(turn: Turn) -> dict[str, Any]:
    return {
        "inputs": dict(turn.inputs),
        "outputs": dict(turn.outputs),
        "trace_id": turn.trace_id,
        "version": turn.version,
        "at": turn.at,
    }


def _turn(data: Any) -> Turn:
    return Turn(
        inputs=data.get("inputs", {}),
        outputs=data.get("outputs", {}),
        trace_id=data.get("trace_id"),
        version=data.get("version"),
        at=float(data.get("at", 0.0)),
    )


class SqlSessionStore:
    """A :class:`~geode.runtime.serving.sessions.SessionStore` in the state database.

    A session is one row (its turns as JSON). An append reads and rewrites the row inside a write
    transaction that locks it, so two replicas appending to one session at once both keep their turn.
    Sessions expire ``ttl_s`` after their last turn; expired rows are deleted now and then by appends.

    Args:
        state: The database.
        ttl_s: A session with no new turn for this long is forgotten.
        max_turns: Turns kept per session; older ones are dropped.
        clock: Wall clock (shared between processes, unlike a monotonic one).
    """

    def __init__(
        self,
        state: SqlState,
        *,
        ttl_s: float = 3600.0,
        max_turns: int = 20,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_turns < 1 or ttl_s <= 0:
            raise ValueError("max_turns must be >= 1 and ttl_s > 0")
        self.state = state
        self.ttl_s = ttl_s
        self.max_turns = max_turns
        self._clock = clock
        insert = state.insert_statement(_T)
        self._claim = insert.on_conflict_do_update(
            index_elements=[_T.c.key], set_={"key": insert.excluded.key}
        ).returning(_T.c.turns, _T.c.touched)

    def turns(self, session_id: str) -> Sequence[Turn]:
        """The session's turns, oldest first (empty for an unknown or expired session)."""
        now = self._clock()
        with self.state.read_one() as conn:
            raw = conn.execute(
                sa.select(_T.c.turns).where(_T.c.key == session_id, _T.c.touched > now - self.ttl_s)
            ).scalar()
        if raw is None:
            return ()
        return tuple(_turn(t) for t in json.loads(raw))

    def append(self, session_id: str, turn: Turn) -> None:
        """Add a turn at the end of the session (creating it, or restarting an expired one)."""
        now = self._clock()
        with self.state.write() as conn:
            # One statement creates the row if missing, locks it, and returns what it holds (a no-op
            # update of the key takes the row lock where an INSERT ... DO NOTHING would not).
            row = conn.execute(self._claim.values(key=session_id, touched=now, turns="[]")).one()
            turns: list[Any] = json.loads(row.turns) if row.touched > now - self.ttl_s else []
            turns.append(_turn_json(turn))
            del turns[: max(0, len(turns) - self.max_turns)]
            conn.execute(
                _T.update()
                .where(_T.c.key == session_id)
                .values(turns=json.dumps(turns, ensure_ascii=False, default=str), touched=now)
            )
            if random.random() < 0.01:  # amortised clean-up of expired sessions
                conn.execute(_T.delete().where(_T.c.touched <= now - self.ttl_s))

    def delete(self, session_id: str) -> bool:
        """Forget a session; ``True`` if it existed."""
        with self.state.write() as conn:
            return (
                conn.execute(_T.delete().where(_T.c.key == session_id).returning(_T.c.key)).first()
                is not None
            )

    def __len__(self) -> int:
        now = self._clock()
        with self.state.read() as conn:
            return int(
                conn.execute(
                    sa.select(sa.func.count()).select_from(_T).where(_T.c.touched > now - self.ttl_s)
                ).scalar_one()
            )
