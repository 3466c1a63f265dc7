"""The served-run index: trace id → (root span, program, version, caller), shared by every replica.

``POST /feedback`` looks a run up here, so feedback is accepted by any replica, not only the one that
served the run, and still only from the caller the run was served to.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import sqlalchemy as sa

from geode.runtime.state.backend import SqlState
from geode.runtime.state.schema import tables

__all__ = ["ServedRun", "SqlRunIndex"]

_T = tables.served_runs


@dataclass(frozen=True)
class ServedRun:
    """One run a replica served."""

    trace_id: str
    span_id: str
    """The run's root span."""
    program: str
    version: str | None
    caller: str
    """Who ran it (the API key's id): only that caller may send feedback on it."""
    at: float = 0.0


class SqlRunIndex:
    """Served runs in the state database, kept for ``retention_s`` (pruned as runs are added).

    Args:
        state: The database.
        retention_s: How long a run can receive feedback through the index.
        prune_every: Prune expired runs once per this many additions.
    """

    def __init__(self, state: SqlState, *, retention_s: float = 7 * 86400.0, prune_every: int = 1000) -> None:
        self.state = state
        self.retention_s = retention_s
        self.prune_every = prune_every
        self._added = 0

    def remember(self, run: ServedRun) -> None:
        """Record a run (a second record of the same trace id replaces the first)."""
        now = time.time()
        values = {
            "trace_id": run.trace_id,
            "span_id": run.span_id,
            "program": run.program,
            "version": run.version,
            "caller": run.caller,
            "at": run.at or now,
        }
        with self.state.write() as conn:
            conn.execute(self.state.upsert(_T, values, "trace_id"))
            self._added += 1
            if self._added % self.prune_every == 0:
                conn.execute(_T.delete().where(_T.c.at < now - self.retention_s))

    def find(self, trace_id: str) -> ServedRun | None:
        """The run with this trace id, if any replica served it within the retention."""
        with self.state.read() as conn:
            row = conn.execute(
                sa.select(_T).where(_T.c.trace_id == trace_id, _T.c.at >= time.time() - self.retention_s)
            ).one_or_none()
        if row is None:
            return None
        return ServedRun(row.trace_id, row.span_id, row.program, row.version, row.caller, row.at)
