"""``Runtime.feedback``: a score, label or comment on a run, stored in Phoenix and never lost.

Feedback is written to the local feedback log under the Geode home first (``feedback/feedback.jsonl``,
the same :class:`~geode.runtime.feedback_sinks.FeedbackLog` ``geode serve`` writes and ``geode mine``
and ``geode compare-versions`` read), and to the outbox in the state database (``<home>/state.db`` or
the deployment's PostgreSQL: :class:`~geode.runtime.state.SqlOutbox`). A background thread then sends
it to Phoenix through the Phoenix sink (:class:`~geode.runtime.feedback_sinks.PhoenixFeedback`) as a
span annotation on the run's root span. While Phoenix is down, unreachable or has not ingested the run
yet, the record stays in the outbox and is re-sent with backoff (1 s doubling to 60 s) until Phoenix
comes back. The outbox is shared: a record left by a process or replica that exited or died is sent by
any other runtime on the same state database (a server resumes delivery when it starts), at least once
and deduplicated by the record's id. Nothing here raises because Phoenix is down.

The root span's id is looked up in Phoenix by trace id (the trace must be ingested for that); if Phoenix
still does not know the run after ``span_wait_s`` (its spans were sampled out, or went elsewhere), the
feedback becomes a trace annotation instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final, Protocol

from geode.errors import InputError, TraceSourceError
from geode.evals.mining import Annotation
from geode.runtime.feedback_sinks import (
    AnnotatorKind,
    FeedbackLog,
    FeedbackRecord,
    FeedbackSink,
    PhoenixFeedback,
    read_feedback,
)
from geode.runtime.settings import Settings
from geode.runtime.state import SqlOutbox, SqlState, open_state, sqlite_url
from geode.runtime.tracing.exporters import program_project
from geode.traces.sources import PhoenixTraceSource, normalize_trace_id, phoenix_base_url

__all__ = [
    "FeedbackOutbox",
    "FeedbackReceipt",
    "FeedbackTarget",
    "PhoenixTarget",
    "RunNotVisible",
    "TargetUnavailable",
    "feedback_annotations",
    "feedback_log_path",
    "make_feedback_record",
    "record_id",
]

logger = logging.getLogger("geode.feedback")

_LEGACY_OUTBOX: Final = "outbox.jsonl"
_PROGRAM_FIELD: Final = "{program}"


def feedback_log_path(settings: Settings) -> Path:
    """The local feedback log every Geode process of this home appends to."""
    return settings.home / "feedback" / "feedback.jsonl"


def feedback_annotations(settings: Settings) -> list[Annotation]:
    """The local feedback log as mining annotations (``source="local"``).

    Example:
        >>> from geode.runtime.settings import Settings
        >>> feedback_annotations(Settings(home="/nonexistent-geode-home"))
        []
    """
    return [
        Annotation(
            trace_id=r.trace_id,
            name=r.name,
            score=r.score,
            label=r.label,
            explanation=r.explanation,
            annotator_kind=r.annotator_kind,
            span_id=r.span_id,
            source="local",
            at=r.at,
        )
        for r in read_feedback(feedback_log_path(settings))
    ]


def make_feedback_record(
    trace_id: str,
    *,
    score: float | None = None,
    label: str | None = None,
    comment: str | None = None,
    name: str = "user_feedback",
    annotator_kind: AnnotatorKind = "HUMAN",
    span_id: str | None = None,
    program: str | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> FeedbackRecord:
    """Validate feedback arguments into a record.

    Raises:
        InputError: No score, label or comment; a bad trace or span id; a score that is not finite.
    """
    if score is None and label is None and not comment:
        raise InputError("feedback needs a score, a label or a comment")
    if score is not None:
        if isinstance(score, bool) or not isinstance(score, int | float) or score != score:
            raise InputError(f"feedback score must be a number, got {score!r}")
        if score in (float("inf"), float("-inf")):
            raise InputError(f"feedback score must be finite, got {score!r}")
    if not name or not name.strip():
        raise InputError("feedback name must not be empty")
    if annotator_kind not in ("HUMAN", "LLM", "CODE"):
        raise InputError(f"annotator_kind must be HUMAN, LLM or CODE, got {annotator_kind!r}")
    try:
        trace = normalize_trace_id(trace_id)
    except Exception as err:
        raise InputError(
            f"{trace_id!r} is not a trace id", hint="pass geode.trace_id_of(prediction)"
        ) from err
    span = span_id.strip().lower() if span_id else None
    if span is not None and (len(span) != 16 or any(c not in "0123456789abcdef" for c in span)):
        raise InputError(f"{span_id!r} is not a span id (16 hex digits)")
    return FeedbackRecord(
        trace_id=trace,
        name=name.strip(),
        span_id=span,
        score=float(score) if score is not None else None,
        label=label,
        explanation=comment or None,
        annotator_kind=annotator_kind,
        program=program,
        metadata=dict(metadata or {}),
    )


@dataclass(frozen=True)
class FeedbackReceipt:
    """Where one piece of feedback is."""

    record: FeedbackRecord
    delivered: bool
    """True when Phoenix stored it before :meth:`Runtime.feedback` returned."""
    pending: int
    """Records (this one included, unless delivered) in the outbox waiting for Phoenix."""
    log: Path
    """The local feedback log it was appended to."""


class FeedbackTarget(Protocol):
    """Where the outbox delivers: resolves a run's root span, then annotates it."""

    def root_span(self, record: FeedbackRecord) -> str | None:
        """The root span id of the record's run; ``None`` when it cannot be looked up (no project).

        Raises:
            TargetUnavailable: Phoenix is not reachable.
            RunNotVisible: Phoenix does not show the run (yet).
        """
        ...

    def sink(self) -> FeedbackSink:
        """The sink that stores the annotation."""
        ...


class TargetUnavailable(Exception):
    """Phoenix is not reachable: every pending record waits for the next attempt."""


class RunNotVisible(Exception):
    """Phoenix is up but does not show the run yet: this record waits, the others go ahead."""


class PhoenixTarget:
    """The Phoenix the runtime traces to, found again on every attempt (it may start later)."""

    def __init__(self, settings: Settings, *, timeout_s: float) -> None:
        self.settings = settings
        self.timeout_s = timeout_s
        self._sinks: dict[str, PhoenixFeedback] = {}

    def url(self) -> str:
        """Phoenix's base URL: the configured collector, else a local Phoenix that is up now.

        Raises:
            TargetUnavailable: Neither is there.
        """
        from geode.runtime.tracing import resolve_endpoint

        endpoint = resolve_endpoint(self.settings)
        if endpoint is None:
            raise TargetUnavailable("no Phoenix is running and no collector endpoint is configured")
        return phoenix_base_url(endpoint)

    def _api_key(self) -> str | None:
        key = self.settings.phoenix.api_key
        return key.get_secret_value() if key is not None else None

    def project(self, program: str | None) -> str | None:
        """The Phoenix project of a program's runs; ``None`` for per-program projects without a program."""
        template = self.settings.tracing.project
        if _PROGRAM_FIELD not in template:
            return template
        if not program:
            return None  # per-program projects and no program given: annotate the trace instead
        return program_project(template, program)

    def root_span(self, record: FeedbackRecord) -> str | None:
        """The root span id of the record's run, looked up in Phoenix by trace id."""
        project = self.project(record.program)
        if project is None:
            return None
        with PhoenixTraceSource(
            self.url(), project, api_key=self._api_key(), timeout_s=self.timeout_s
        ) as source:
            try:
                spans = source.spans([record.trace_id])
            except TraceSourceError as err:
                if "no such project" in str(err):
                    raise RunNotVisible(str(err)) from err
                raise TargetUnavailable(str(err)) from err
        root = next((s.span_id for s in spans if s.parent_id is None), None)
        if root is None:
            raise RunNotVisible(f"Phoenix does not show trace {record.trace_id} yet")
        return root

    def sink(self) -> FeedbackSink:
        """The Phoenix sink (the one ``POST /feedback`` uses too) for the current Phoenix URL."""
        url = self.url()
        sink = self._sinks.get(url)
        if sink is None:
            sink = self._sinks[url] = PhoenixFeedback(url, api_key=self._api_key(), timeout_s=self.timeout_s)
        return sink

    def close(self) -> None:
        """Close the sinks' HTTP connections."""
        for sink in self._sinks.values():
            with contextlib.suppress(Exception):
                sink.close()


def _refused(err: Exception) -> bool:
    """A client error Phoenix will repeat for the same record (not a timeout or rate limit)."""
    import httpx

    if not isinstance(err, httpx.HTTPStatusError):
        return False
    status = err.response.status_code
    return 400 <= status < 500 and status not in (401, 403, 404, 408, 429)


def record_id(record: FeedbackRecord) -> str:
    """A record's outbox id: the same feedback (trace, name, time) is queued and delivered once."""
    key = json.dumps([record.trace_id, record.name, repr(record.at)])
    return hashlib.sha256(key.encode()).hexdigest()[:32]


class FeedbackOutbox:
    """Durable feedback delivery: the local log first, then Phoenix, re-sent until Phoenix takes it.

    Args:
        folder: Where the feedback log lives (``<home>/feedback``).
        target: Where to deliver (the runtime's Phoenix).
        state: The state database holding the outbox; default a SQLite file in ``folder`` (the
            runtime passes its own, shared with every process and replica on it).
        span_wait_s: How long a run may stay unknown to Phoenix before its feedback becomes a trace
            annotation instead of a root-span annotation.
        retry_s: First and longest wait between delivery attempts while Phoenix is down.
        lease_s: How long a sender holds the records it is delivering; a sender that dies gives them
            up to the other replicas after this.
        idle_poll_s: How often an idle sender looks for records other processes left (see :meth:`resume`).
    """

    def __init__(
        self,
        folder: Path,
        target: FeedbackTarget,
        *,
        state: SqlState | None = None,
        span_wait_s: float = 120.0,
        retry_s: tuple[float, float] = (1.0, 60.0),
        lease_s: float = 60.0,
        idle_poll_s: float = 30.0,
    ) -> None:
        self.folder = folder
        self.log = FeedbackLog(folder / "feedback.jsonl")
        self.queue = SqlOutbox(state if state is not None else open_state(sqlite_url(folder / "outbox.db")))
        self.lease_s = lease_s
        self.idle_poll_s = idle_poll_s
        self.target = target
        self.span_wait_s = span_wait_s
        self.retry_s = retry_s
        self.last_error: str | None = None
        self._wake = threading.Event()
        self._changed = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._migrate_legacy()

    @classmethod
    def for_settings(
        cls, settings: Settings, *, timeout_s: float = 2.0, state: SqlState | None = None
    ) -> FeedbackOutbox:
        """The outbox of ``settings``' state database, delivering to the Phoenix the settings trace to."""
        if state is None:
            state = open_state(
                settings.state_url, schema_name=settings.state.schema_name, poll_s=settings.state.poll_s
            )
        return cls(
            feedback_log_path(settings).parent, PhoenixTarget(settings, timeout_s=timeout_s), state=state
        )

    def _migrate_legacy(self) -> None:
        # The outbox file of the layout before the state database: queue its records, keep the file
        # renamed (ids make a second import of the same records a no-op).
        path = self.folder / _LEGACY_OUTBOX
        if not path.exists():
            return
        moved = sum(self.queue.add(record_id(r), r.to_json(), created=r.at) for r in read_feedback(path))
        with contextlib.suppress(OSError):
            path.replace(path.with_name(_LEGACY_OUTBOX + ".migrated"))
        logger.info("feedback: moved %d record(s) from %s into the state database", moved, path)

    def resume(self) -> None:
        """Deliver records already waiting, and keep watching for records other processes leave.

        ``geode serve`` calls it on start: records of a replica that died (or exited while Phoenix was
        down) are sent by the replicas still running, at the latest ``idle_poll_s`` plus ``lease_s``
        after they were left.
        """
        self._ensure_worker()

    # -- the caller's side -------------------------------------------------------------------------

    def submit(self, record: FeedbackRecord, *, timeout_s: float = 0.0) -> FeedbackReceipt:
        """Store the record locally, queue it for Phoenix, and wait up to ``timeout_s`` for delivery.

        The wait ends early when an attempt finds Phoenix unreachable or without the run yet: the
        record then stays queued and the receipt says it is pending.

        Never raises because Phoenix is down; raises ``OSError`` only if the local disk refuses the
        write (then the feedback really is not stored, and the caller must know).
        """
        self.log.send(record)
        self.queue.add(record_id(record), record.to_json(), created=record.at)
        self._ensure_worker()
        # A failure of an earlier attempt says nothing about this one; waiting stops at this one's.
        self.last_error = None
        self._wake.set()
        delivered = self.wait(record, timeout_s, while_reachable=True) if timeout_s > 0 else False
        return FeedbackReceipt(record=record, delivered=delivered, pending=self.pending, log=self.log.path)

    @property
    def pending(self) -> int:
        """Records waiting in the outbox (from every process on the state database)."""
        return self.queue.count()

    def wait(
        self, record: FeedbackRecord | None = None, timeout_s: float = 5.0, *, while_reachable: bool = False
    ) -> bool:
        """Wait until ``record`` (or every pending record) has reached Phoenix; ``False`` at the deadline.

        With ``while_reachable``, stop waiting as soon as a delivery attempt finds Phoenix unreachable.
        """
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while True:
                ids = self.queue.ids()
                done = record_id(record) not in ids if record is not None else not ids
                remaining = deadline - time.monotonic()
                if done or remaining <= 0 or (while_reachable and self.last_error is not None):
                    return done
                self._changed.wait(min(remaining, 0.2))

    def close(self, timeout_s: float = 0.0) -> None:
        """Stop the sender (after up to ``timeout_s`` of delivering); what is left stays in the outbox."""
        # Waiting only helps while Phoenix answers; a down Phoenix must not hold the app's shutdown.
        if timeout_s > 0 and self._thread is not None:
            self.wait(timeout_s=timeout_s, while_reachable=True)
        self._closed = True
        self._wake.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout=max(timeout_s, 0.1))
        close = getattr(self.target, "close", None)
        if callable(close):
            with contextlib.suppress(Exception):
                close()

    # -- the sender --------------------------------------------------------------------------------

    def _ensure_worker(self) -> None:
        with self._start_lock:
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._run, name="geode-feedback", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        delay = self.retry_s[0]
        while not self._closed:
            self._wake.clear()
            try:
                progress = self.deliver_pending()
            except Exception as err:  # the sender must outlive any surprise
                logger.warning("feedback delivery failed: %s", err)
                progress = False
            if self._closed:
                return
            if not self.queue.count():
                delay = self.retry_s[0]
                # Idle: woken by a submit, or look again for what other processes on the database left.
                self._wake.wait(self.idle_poll_s)
                continue
            delay = self.retry_s[0] if progress else min(delay * 2, self.retry_s[1])
            self._wake.wait(delay)

    def deliver_pending(self) -> bool:
        """One pass over the outbox: send what Phoenix takes now. Returns whether anything was sent.

        Records are claimed for ``lease_s`` first, so another replica's sender skips them meanwhile;
        what is not delivered is given back at the end of the pass.
        """
        claimed = self.queue.claim(lease_s=self.lease_s)
        delivered: list[str] = []
        try:
            for rid, data in claimed:
                if self._closed:
                    break
                try:
                    record = FeedbackRecord(**data)
                except TypeError:
                    logger.warning("dropping a damaged feedback record from the outbox: %r", data)
                    delivered.append(rid)
                    continue
                try:
                    self._deliver(record)
                except RunNotVisible as err:
                    self.last_error = str(err)
                    continue
                except TargetUnavailable as err:
                    self.last_error = str(err)
                    with self._changed:
                        self._changed.notify_all()
                    break
                except Exception as err:
                    self.last_error = f"{type(err).__name__}: {err}"
                    if _refused(err):
                        # Phoenix will never take this one; it stays in the local log, and must not block the rest.
                        logger.warning("Phoenix refused feedback for trace %s: %s", record.trace_id, err)
                        delivered.append(rid)
                        continue
                    logger.info("feedback for trace %s not sent to Phoenix yet: %s", record.trace_id, err)
                    break
                delivered.append(rid)
                self.last_error = None
        finally:
            self.queue.remove(delivered)
            done = set(delivered)
            self.queue.release(rid for rid, _ in claimed if rid not in done)
            if delivered:
                with self._changed:
                    self._changed.notify_all()
        return bool(delivered)

    def _deliver(self, record: FeedbackRecord) -> None:
        if record.span_id is None:
            try:
                span_id = self.target.root_span(record)
            except RunNotVisible:
                if time.time() - record.at < self.span_wait_s:
                    raise
                span_id = None  # never arrived (sampled out, another project): annotate the trace
            if span_id is not None:
                record = replace(record, span_id=span_id)
        self.target.sink().send(record)
