"""The export processor: a bounded queue on the application's side, one worker thread on the other.

``on_end`` (called on the application's thread when a span ends) only appends to a bounded deque;
when the queue is full the span is dropped and counted, never waited for. A daemon worker thread
redacts and exports batches to every destination, so a collector that is down, refusing or hanging
costs the application nothing but the spans it loses. The first loss is logged once, with its reason;
later ones are only counted (:attr:`BatchExportProcessor.stats`). ``force_flush`` and ``shutdown``
wait for the worker at most until their deadline. A process forked after the processor was built
gets a fresh queue, locks and worker of its own (see :mod:`geode.runtime.tracing._fork`).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from opentelemetry import context as otel_context
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from geode.runtime.tracing._fork import renew_after_fork
from geode.runtime.tracing.redaction import SpanRedactor

__all__ = ["BatchExportProcessor", "Destination", "ExportStats"]

logger = logging.getLogger("geode.tracing")

_SUPPRESS_KEY: Final = otel_context._SUPPRESS_INSTRUMENTATION_KEY


@dataclass(frozen=True)
class Destination:
    """One place spans are exported to."""

    name: str
    """Shown in logs and stats: the collector URL or the file path."""
    exporter: SpanExporter


@dataclass
class ExportStats:
    """What happened to the spans handed to the processor (a snapshot)."""

    queued: int = 0
    """Spans accepted into the queue."""
    dropped_queue_full: int = 0
    """Spans dropped because the queue was full (the exporter could not keep up)."""
    dropped_after_shutdown: int = 0
    """Spans that ended after shutdown, or were still queued when the shutdown deadline passed."""
    exported: dict[str, int] = field(default_factory=dict[str, int])
    """Spans each destination accepted."""
    failed: dict[str, int] = field(default_factory=dict[str, int])
    """Spans each destination refused or could not be reached for."""
    failed_by_kind: dict[str, int] = field(default_factory=dict[str, int])
    """The same losses by why: ``unreachable`` (no answer), ``rejected`` (the collector answered
    with an error status, 429/503 when at capacity), ``unauthorized`` (401/403), ``failed`` (anything
    else: a file that cannot be written, redaction)."""

    @property
    def dropped(self) -> int:
        """Spans lost before or during export, over all destinations."""
        return self.dropped_queue_full + self.dropped_after_shutdown + sum(self.failed.values())


def _failure_kind(exporter: SpanExporter) -> str:
    kind = getattr(exporter, "last_failure", None)
    return kind if isinstance(kind, str) and kind else "failed"


def _ready(exporter: SpanExporter) -> bool:
    ready = getattr(exporter, "ready", None)
    try:
        return bool(ready()) if callable(ready) else True
    except Exception:
        return True


class BatchExportProcessor(SpanProcessor):
    """Batches sampled spans to one or more destinations from a worker thread.

    Args:
        destinations: Where spans go; each gets every batch.
        redactor: Applied to each span once, before any destination sees it.
        max_queue_size: Spans waiting for export; more are dropped and counted.
        max_batch_size: Spans per export call.
        schedule_delay_s: How long the worker waits for a full batch before exporting a partial one.
        timeout_s: Default deadline of :meth:`force_flush` and :meth:`shutdown`.
    """

    def __init__(
        self,
        destinations: Sequence[Destination],
        *,
        redactor: SpanRedactor | None = None,
        max_queue_size: int = 4096,
        max_batch_size: int = 512,
        schedule_delay_s: float = 0.5,
        timeout_s: float = 5.0,
    ) -> None:
        self.destinations = tuple(destinations)
        self.redactor = redactor
        self.max_queue_size = max_queue_size
        self.max_batch_size = max(1, min(max_batch_size, max_queue_size))
        self.schedule_delay_s = schedule_delay_s
        self.timeout_s = timeout_s
        self._stopping = False
        self._fresh_state()
        self._worker = self._start_worker()
        renew_after_fork(self)

    def _fresh_state(self) -> None:
        self._queue: collections.deque[ReadableSpan] = collections.deque()
        self._wake = threading.Event()
        self._stop_exports = threading.Event()
        self._flush_lock = threading.Lock()
        self._flush_requests: list[threading.Event] = []
        self._stats_lock = threading.Lock()
        self._stats = ExportStats(
            exported=dict.fromkeys((d.name for d in self.destinations), 0),
            failed=dict.fromkeys((d.name for d in self.destinations), 0),
        )
        self._warned: set[str] = set()

    def _start_worker(self) -> threading.Thread:
        worker = threading.Thread(target=self._run, name="geode-span-export", daemon=True)
        worker.start()
        return worker

    def _after_fork_in_child(self) -> None:
        """In a forked child: a fresh queue, locks, counters and worker.

        New locks, because the parent's worker may have held them at the fork; an empty queue, because
        the parent exports what it queued; counters from zero; a worker of the child's own.
        """
        self._fresh_state()
        if not self._stopping:
            self._worker = self._start_worker()

    # -- the application's side ------------------------------------------------------------------

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        """Nothing to do when a span starts."""

    def on_end(self, span: ReadableSpan) -> None:
        """Queue a finished span; drop and count it if the queue is full. Never blocks."""
        context = span.context
        if context is None or not context.trace_flags.sampled:
            return
        if self._stopping:
            self._drop("dropped_after_shutdown", 1, "the tracer provider was shut down")
            return
        queue = self._queue
        if len(queue) >= self.max_queue_size:
            self._drop("dropped_queue_full", 1, f"the export queue is full ({self.max_queue_size} spans)")
            return
        queue.append(span)
        self._stats.queued += 1
        if len(queue) >= self.max_batch_size:
            self._wake.set()

    def _drop(self, counter: str, count: int, reason: str) -> None:
        with self._stats_lock:
            setattr(self._stats, counter, getattr(self._stats, counter) + count)
        self._warn_once(reason)

    def _warn_once(self, reason: str, *, kind: str = "") -> None:
        if kind in self._warned:
            return
        self._warned.add(kind)
        logger.warning(
            "Geode tracing is dropping spans: %s. The application is not affected; further drops are "
            "counted, not logged (see the tracing pipeline's stats).",
            reason,
        )

    @property
    def stats(self) -> ExportStats:
        """A snapshot of the counters."""
        with self._stats_lock:
            s = self._stats
            return ExportStats(
                queued=s.queued,
                dropped_queue_full=s.dropped_queue_full,
                dropped_after_shutdown=s.dropped_after_shutdown,
                exported=dict(s.exported),
                failed=dict(s.failed),
                failed_by_kind=dict(s.failed_by_kind),
            )

    # -- the worker ------------------------------------------------------------------------------

    def _run(self) -> None:
        # Exports must not be traced themselves (an instrumented HTTP client would loop).
        otel_context.attach(otel_context.set_value(_SUPPRESS_KEY, True))
        while True:
            self._wake.wait(self.schedule_delay_s)
            self._wake.clear()
            # Read before exporting: spans queued before shutdown began still go out in this pass.
            stopping = self._stopping
            with self._flush_lock:
                waiting, self._flush_requests = self._flush_requests, []
            self._export_queued()
            for event in waiting:
                event.set()
            if stopping:
                return

    def _export_queued(self) -> None:
        # Everything queued goes out now, in batches: the worker only wakes on the timer, a full
        # batch, a flush or shutdown, and in each case waiting longer would only risk drops.
        queue = self._queue
        while queue and not self._stop_exports.is_set():
            batch: list[ReadableSpan] = []
            try:
                while len(batch) < self.max_batch_size:
                    batch.append(queue.popleft())
            except IndexError:
                pass
            if batch:
                self._export(batch)

    def _export(self, batch: list[ReadableSpan]) -> None:
        spans: Sequence[ReadableSpan] = batch
        ready = [d for d in self.destinations if _ready(d.exporter)]
        for destination in self.destinations:
            if destination not in ready:
                # Resting after a failure: count the loss without redacting or encoding anything.
                self._count(
                    destination,
                    len(batch),
                    ok=False,
                    reason="collector unavailable",
                    kind=_failure_kind(destination.exporter),
                )
        if not ready:
            return
        if self.redactor is not None:
            try:
                spans = [self.redactor.redact(span) for span in batch]
            except Exception:
                logger.debug(
                    "redaction failed; dropping the batch rather than exporting it raw", exc_info=True
                )
                for destination in ready:
                    self._count(destination, len(batch), ok=False, reason="redaction failed")
                return
        for destination in ready:
            try:
                result = destination.exporter.export(spans)
            except Exception as err:
                logger.debug("exporter %s raised", destination.name, exc_info=True)
                self._count(destination, len(spans), ok=False, reason=f"{type(err).__name__}: {err}")
                continue
            if result is SpanExportResult.SUCCESS:
                self._count(destination, len(spans), ok=True)
            else:
                reason = getattr(destination.exporter, "last_error", None) or "export failed"
                kind = _failure_kind(destination.exporter)
                self._count(destination, len(spans), ok=False, reason=reason, kind=kind)

    def _count(
        self, destination: Destination, count: int, *, ok: bool, reason: str = "", kind: str = "failed"
    ) -> None:
        with self._stats_lock:
            counters = self._stats.exported if ok else self._stats.failed
            counters[destination.name] = counters.get(destination.name, 0) + count
            if not ok:
                by_kind = self._stats.failed_by_kind
                by_kind[kind] = by_kind.get(kind, 0) + count
        if not ok:
            # Once per kind: a collector that was down and now rejects (or refuses the key) is news.
            self._warn_once(f"export to {destination.name} failed ({reason})", kind=kind)

    # -- flush and shutdown ----------------------------------------------------------------------

    def force_flush(self, timeout_millis: int | None = None) -> bool:
        """Export everything queued now; wait at most ``timeout_millis`` (default: the processor's).

        Returns:
            True if the worker finished within the deadline.
        """
        if self._stopping or not self._worker.is_alive():
            return not self._queue
        timeout = self.timeout_s if timeout_millis is None else min(timeout_millis / 1000, self.timeout_s)
        done = threading.Event()
        with self._flush_lock:
            self._flush_requests.append(done)
        self._wake.set()
        return done.wait(timeout)

    def shutdown(self, timeout_millis: int | None = None) -> None:
        """Export what is queued, then stop; return at the deadline whatever the collector does.

        Spans still queued when the deadline passes are counted as dropped.
        """
        if self._stopping:
            return
        deadline = time.monotonic() + (self.timeout_s if timeout_millis is None else timeout_millis / 1000)
        self._stopping = True
        self._wake.set()
        self._worker.join(max(0.0, deadline - time.monotonic()))
        if self._worker.is_alive():
            # Stuck in an export: stop after it, abandon the rest, and unblock what can be unblocked.
            self._stop_exports.set()
            left = len(self._queue)
            self._queue.clear()
            if left:
                self._drop(
                    "dropped_after_shutdown", left, "the shutdown deadline passed with spans still queued"
                )
        for destination in self.destinations:
            try:
                destination.exporter.shutdown()
            except Exception:
                logger.debug("exporter %s failed to shut down", destination.name, exc_info=True)
