"""The served-run index: trace id → (root span, program, version, caller), shared by every replica.

``POST /feedback`` looks a run up here, so feedback is accepted by any replica, not only the one that
served the run, and still only from the caller the run was served to.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from geode.runtime.state.backend import SqlState
from geode.runtime.state.schema import tables

__all__ = ["RunRecorder", "ServedRun", "SqlRunIndex"]

logger = logging.getLogger("geode.state")

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
        # Built once: the statement is the same for every batch (executemany binds the rows).
        self._upsert = state.upsert_many(_T, list(_T.columns.keys()), "trace_id")

    def remember(self, run: ServedRun) -> None:
        """Record a run (a second record of the same trace id replaces the first)."""
        self.remember_many([run])

    def remember_many(self, runs: Sequence[ServedRun]) -> None:
        """Record runs in one transaction (one statement, many rows): what a batch of requests costs."""
        if not runs:
            return
        now = time.time()
        rows = {
            run.trace_id: {
                "trace_id": run.trace_id,
                "span_id": run.span_id,
                "program": run.program,
                "version": run.version,
                "caller": run.caller,
                "at": run.at or now,
            }
            for run in runs
        }
        with self.state.write() as conn:
            conn.execute(self._upsert, list(rows.values()))
            before = self._added
            self._added += len(rows)
            if self._added // self.prune_every != before // self.prune_every:
                conn.execute(_T.delete().where(_T.c.at < now - self.retention_s))

    def find(self, trace_id: str) -> ServedRun | None:
        """The run with this trace id, if any replica served it within the retention."""
        with self.state.read_one() as conn:
            row = conn.execute(
                sa.select(_T).where(_T.c.trace_id == trace_id, _T.c.at >= time.time() - self.retention_s)
            ).one_or_none()
        if row is None:
            return None
        return ServedRun(row.trace_id, row.span_id, row.program, row.version, row.caller, row.at)


class RunRecorder:
    """Records served runs in the index off the request path, a small batch per transaction.

    A served request only queues its run (a dict insert under a lock); a background thread writes what
    is queued at most ``delay_s`` later, in one transaction. Where the synchronous write cost a request
    a whole write transaction, a batch shares one among every run answered in ``delay_s``.

    What is promised: :meth:`find` on this replica sees a queued run at once; another replica sees it
    in the database within ``delay_s`` plus one write (``POST /feedback`` looks again after that before
    refusing). A replica killed (``kill -9``) loses the runs of its last ``delay_s`` from the index, so
    feedback for those is refused; a replica that shuts down writes them first (:meth:`close`).

    Args:
        index: The index written to.
        delay_s: The longest a run waits before its batch is written.
        max_batch: Runs per transaction at most (a larger backlog is written in several).
    """

    def __init__(self, index: SqlRunIndex, *, delay_s: float = 0.05, max_batch: int = 500) -> None:
        self.index = index
        self.delay_s = delay_s
        self.max_batch = max_batch
        self._pending: dict[str, ServedRun] = {}
        self._writing: dict[str, ServedRun] = {}
        self._cond = threading.Condition()
        self._closed = False
        self._urgent = False
        self._thread: threading.Thread | None = None
        self.failures = 0

    def remember(self, run: ServedRun) -> None:
        """Queue a run for the index (never blocks on the database)."""
        with self._cond:
            if self._closed:
                raise RuntimeError("the run recorder is closed")
            self._pending[run.trace_id] = run
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="geode-run-index", daemon=True)
                self._thread.start()
            if len(self._pending) == 1 or len(self._pending) >= self.max_batch:
                self._cond.notify_all()

    def find(self, trace_id: str) -> ServedRun | None:
        """A queued run, or one any replica recorded in the database."""
        with self._cond:
            run = self._pending.get(trace_id) or self._writing.get(trace_id)
        return run if run is not None else self.index.find(trace_id)

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until every run queued so far is written (``False``: still not after ``timeout_s``)."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            self._urgent = True
            self._cond.notify_all()
            while self._pending or self._writing:
                left = deadline - time.monotonic()
                if left <= 0 or self._thread is None:
                    return False
                self._cond.wait(left)
        return True

    def close(self, timeout_s: float = 10.0) -> None:
        """Write what is queued, then stop the thread."""
        self.flush(timeout_s)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout_s)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if not self._pending:
                    return
                # Gather what arrives within delay_s of the batch's first run (unless flushed or full).
                deadline = time.monotonic() + self.delay_s
                while not (self._closed or self._urgent) and len(self._pending) < self.max_batch:
                    left = deadline - time.monotonic()
                    if left <= 0 or not self._cond.wait(left):
                        break
                batch = dict(list(self._pending.items())[: self.max_batch])
                for key in batch:
                    del self._pending[key]
                self._writing = batch
                self._urgent = bool(self._pending) and self._urgent
            try:
                self.index.remember_many(list(batch.values()))
            except Exception as err:  # the answers are made: feedback for these reaches this replica only
                self.failures += 1
                logger.warning("%d served runs not recorded in the state database: %s", len(batch), err)
            with self._cond:
                self._writing = {}
                self._urgent = self._urgent and bool(self._pending)
                self._cond.notify_all()
