"""The :class:`TraceSource` interface, its filter and the result of waiting for traces."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Protocol, runtime_checkable

from geode.errors import TraceSourceError
from geode.traces.records import SpanStatus, TraceRecord
from geode.traces.vocab import SpanAttributes

__all__ = ["ProgramRuns", "TraceFilter", "TraceSource", "TraceWait", "latest_trace", "programs_with_runs"]


@dataclass(frozen=True)
class TraceFilter:
    """Which traces to read. Every condition given must hold; they apply to the trace's root span.

    Example:
        >>> from datetime import UTC, datetime, timedelta
        >>> TraceFilter(program="app:agent", start=datetime.now(UTC) - timedelta(hours=1), limit=100).limit
        100
    """

    program: str | None = None
    """The run's program: its ``geode.program.name`` or one of its ``geode.program.aliases``. Every source
    matches both; Phoenix cannot match a list attribute server-side, so it pages through root spans and
    matches them here (see :class:`~geode.traces.sources.PhoenixTraceSource`)."""
    session_id: str | None = None
    """``session.id`` of the run."""
    status: SpanStatus | None = None
    """The root span's status: ``ERROR`` for failed runs, ``OK`` or ``UNSET`` for the others."""
    start: datetime | None = None
    """Traces that started at or after this moment (naive datetimes are taken as UTC)."""
    end: datetime | None = None
    """Traces that started before this moment (naive datetimes are taken as UTC)."""
    where: str | None = None
    """A Phoenix ``SpanQuery`` condition (``"span_kind == 'TOOL' and tool.name == 'search'"``): a trace
    matches when any of its spans does. Only :class:`~geode.traces.sources.PhoenixTraceSource` can
    evaluate it; other sources raise :class:`~geode.errors.TraceSourceError`."""
    limit: int | None = None
    """At most this many traces (the newest ones)."""

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit < 1:
            raise TraceSourceError(f"limit must be at least 1, got {self.limit}")
        if self.status is not None and self.status not in ("UNSET", "OK", "ERROR"):
            raise TraceSourceError(f"status must be UNSET, OK or ERROR, got {self.status!r}")
        for name in ("start", "end"):
            value = getattr(self, name)
            if value is not None and value.tzinfo is None:
                object.__setattr__(self, name, value.replace(tzinfo=UTC))
        if self.start is not None and self.end is not None and self.start >= self.end:
            raise TraceSourceError(
                f"the time window is empty: start {self.start} is not before end {self.end}"
            )

    def matches(self, trace: TraceRecord) -> bool:
        """Whether a trace passes every condition except :attr:`where` (which only Phoenix evaluates)."""
        if not self.matches_program(trace.program_names):
            return False
        if self.session_id is not None and trace.attribute(SpanAttributes.SESSION_ID) != self.session_id:
            return False
        if self.status is not None and trace.status != self.status:
            return False
        if self.start is not None and trace.start_time < self.start:
            return False
        return not (self.end is not None and trace.start_time >= self.end)

    def matches_program(self, names: tuple[str, ...]) -> bool:
        """Whether a run with these program names (name first, then aliases) passes :attr:`program`."""
        return self.program is None or self.program in names

    def require_no_where(self, source: str) -> None:
        """Raise if :attr:`where` is set: ``source`` cannot evaluate Phoenix query conditions."""
        if self.where is not None:
            raise TraceSourceError(
                f"{source} cannot evaluate a SpanQuery condition ({self.where!r})",
                hint="use the Phoenix source for `where`, or filter the TraceRecords in Python",
            )


@dataclass(frozen=True)
class TraceWait:
    """What :meth:`TraceSource.wait_for` found before its deadline."""

    source: str
    """Which source answered (its :attr:`TraceSource.description`), so callers can say what they read."""
    traces: tuple[TraceRecord, ...]
    """The complete traces found, in the order their ids were asked for."""
    missing: tuple[str, ...]
    """Ids of traces not (completely) visible when the deadline passed."""
    elapsed_s: float

    @property
    def complete(self) -> bool:
        """True when every requested trace was found complete."""
        return not self.missing


@runtime_checkable
class TraceSource(Protocol):
    """Somewhere finished traces can be read from: Phoenix, OTLP-JSON files, or memory."""

    @property
    def description(self) -> str:
        """Where the traces come from, for messages (``Phoenix at http://... project 'geode'``)."""
        ...

    def traces(self, filter: TraceFilter | None = None) -> Iterator[TraceRecord]:
        """The traces matching ``filter``, newest first (by their root span's start time)."""
        ...

    def trace(self, trace_id: str) -> TraceRecord:
        """One trace by id.

        Raises:
            TraceSourceError: The trace is not in this source.
        """
        ...

    def run_programs(self, filter: TraceFilter | None = None) -> Iterator[tuple[str, ...]]:
        """The program names (name first, then aliases) of each run matching ``filter``, newest first.

        Cheaper than :meth:`traces` where a source can answer from root spans alone (Phoenix): used to
        list the programs that have runs and to tell which programs an alias names.
        """
        ...

    def wait_for(
        self, trace_ids: Iterable[str], *, timeout_s: float = 60.0, poll_s: float = 0.25
    ) -> TraceWait:
        """Wait until exactly these traces are completely visible, or the deadline passes.

        A trace counts as complete when its root span is present and every span's parent is present.
        Sources that ingest asynchronously (Phoenix) can show a trace half-written, so they also require
        its span count to hold still across two reads. Never raises for missing traces: the result says
        which ones did not arrive in time.
        """
        ...


def latest_trace(source: TraceSource, filter: TraceFilter | None = None) -> TraceRecord | None:
    """The newest trace matching ``filter`` in ``source``, or ``None`` if there is none."""
    narrowed = replace(filter or TraceFilter(), limit=1)
    return next(source.traces(narrowed), None)


@dataclass(frozen=True)
class ProgramRuns:
    """A program that has runs in a source: its recorded name, every alias seen, how many runs were read."""

    name: str
    """``geode.program.name`` of its runs."""
    aliases: tuple[str, ...]
    """Every ``geode.program.aliases`` value seen on its runs, in first-seen order."""
    runs: int
    """Runs of it among those read."""

    def __str__(self) -> str:
        return f"{self.name} (also {', '.join(self.aliases)})" if self.aliases else self.name


def programs_with_runs(source: TraceSource, filter: TraceFilter | None = None) -> list[ProgramRuns]:
    """The programs with runs matching ``filter`` in ``source``, the most recently run first.

    With ``filter.program`` set this says which programs that name or alias stands for: more than one
    means the alias is ambiguous. ``filter.limit`` bounds the runs read.

    Example:
        >>> from geode.traces.sources import InMemoryTraceSource
        >>> programs_with_runs(InMemoryTraceSource([]))
        []
    """
    found: dict[str, tuple[list[str], int]] = {}
    for names in source.run_programs(filter):
        if not names:
            continue
        aliases, runs = found.get(names[0], ([], 0))
        aliases.extend(a for a in names[1:] if a not in aliases)
        found[names[0]] = (aliases, runs + 1)
    return [ProgramRuns(name, tuple(aliases), runs) for name, (aliases, runs) in found.items()]


def normalize_trace_id(trace_id: str) -> str:
    """Lowercase a 32-hex-digit trace id (``0x`` prefix and dashes allowed).

    Raises:
        TraceSourceError: It is not a trace id.
    """
    text = trace_id.strip().lower().removeprefix("0x").replace("-", "")
    if len(text) != 32 or any(c not in "0123456789abcdef" for c in text):
        raise TraceSourceError(f"{trace_id!r} is not a trace id (expected 32 hex digits)")
    return text


def poll_until_complete(
    read: Callable[[list[str]], Mapping[str, TraceRecord]],
    trace_ids: Iterable[str],
    *,
    source: str,
    timeout_s: float,
    poll_s: float,
    settle: bool = False,
    max_poll_s: float = 2.0,
) -> TraceWait:
    """Drive :meth:`TraceSource.wait_for`: call ``read(pending_ids)`` until every trace is complete.

    ``read`` returns whatever part of the pending traces is visible now. With ``settle``, a complete
    trace must also show the same span count on two reads in a row (for sources that ingest
    asynchronously). Polling backs off from ``poll_s`` to ``max_poll_s`` while nothing changes, and
    never sleeps past the deadline.
    """
    wanted = list(dict.fromkeys(normalize_trace_id(t) for t in trace_ids))
    started = time.monotonic()
    deadline = started + max(timeout_s, 0.0)
    done: dict[str, TraceRecord] = {}
    last_count: dict[str, int] = {}
    delay = poll_s
    while True:
        pending = [t for t in wanted if t not in done]
        if not pending:
            break
        progressed = False
        for trace_id, trace in read(pending).items():
            changed = last_count.get(trace_id) != len(trace.spans)
            last_count[trace_id] = len(trace.spans)
            progressed = progressed or changed
            if trace.complete and not (settle and changed):
                done[trace_id] = trace
        if all(t in done for t in wanted):
            break
        now = time.monotonic()
        if now >= deadline:
            break
        # Progress (including a trace seen complete for the first time) earns a quick re-read.
        delay = poll_s if progressed else min(delay * 1.5, max_poll_s)
        time.sleep(min(delay, deadline - now))
    return TraceWait(
        source=source,
        traces=tuple(done[t] for t in wanted if t in done),
        missing=tuple(t for t in wanted if t not in done),
        elapsed_s=time.monotonic() - started,
    )
