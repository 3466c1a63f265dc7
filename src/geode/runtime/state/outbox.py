"""The feedback outbox in the state database: records waiting for Phoenix, delivered by any replica.

Delivery is at-least-once and deduplicated by record id: a record is added once whatever the number of
submissions, a sender *claims* records for a lease before sending them (so two live replicas do not
send the same record at once), and a claim that lapses (its sender died) makes the record deliverable
by any other replica.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from typing import Any

import sqlalchemy as sa

from geode.runtime.state.backend import SqlState
from geode.runtime.state.schema import tables

__all__ = ["SqlOutbox"]

_T = tables.outbox


class SqlOutbox:
    """Pending feedback records (JSON objects keyed by id) in the state database."""

    def __init__(self, state: SqlState) -> None:
        self.state = state

    def add(self, record_id: str, record: Mapping[str, Any], *, created: float | None = None) -> bool:
        """Queue a record; ``False`` when a record with this id is already queued."""
        values = {
            "id": record_id,
            "record": json.dumps(dict(record), ensure_ascii=False, default=str),
            "created": created if created is not None else time.time(),
            "claimed_until": 0.0,
            "attempts": 0,
        }
        with self.state.write() as conn:
            return conn.execute(self.state.insert_ignore(_T, values)).first() is not None

    def ids(self) -> set[str]:
        """The ids of every queued record."""
        with self.state.read() as conn:
            return set(conn.execute(sa.select(_T.c.id)).scalars())

    def count(self) -> int:
        """Records queued."""
        with self.state.read() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(_T)).scalar_one())

    def claim(self, *, lease_s: float, limit: int = 100) -> list[tuple[str, dict[str, Any]]]:
        """Take up to ``limit`` unclaimed records (oldest first) for ``lease_s`` seconds."""
        now = time.time()
        with self.state.write() as conn:
            rows = conn.execute(
                sa.select(_T.c.id, _T.c.record)
                .where(_T.c.claimed_until <= now)
                .order_by(_T.c.created, _T.c.id)
                .limit(limit)
                .with_for_update(skip_locked=True)
            ).all()
            if rows:
                conn.execute(
                    _T.update()
                    .where(_T.c.id.in_([r.id for r in rows]))
                    .values(claimed_until=now + lease_s, attempts=_T.c.attempts + 1)
                )
        return [(r.id, json.loads(r.record)) for r in rows]

    def release(self, ids: Iterable[str]) -> None:
        """Give claimed records back (not delivered this time)."""
        keys = list(ids)
        if keys:
            with self.state.write() as conn:
                conn.execute(_T.update().where(_T.c.id.in_(keys)).values(claimed_until=0.0))

    def remove(self, ids: Iterable[str]) -> None:
        """Delete delivered records."""
        keys = list(ids)
        if keys:
            with self.state.write() as conn:
                conn.execute(_T.delete().where(_T.c.id.in_(keys)))
