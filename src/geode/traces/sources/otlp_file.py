"""Traces read from OTLP-JSON files, the runtime's own span log (``tracing.otlp_file``).

Each line of such a file is one ``ExportTraceServiceRequest`` in the OTLP JSON encoding
(``{"resourceSpans": [{"resource": ..., "scopeSpans": [{"scope": ..., "spans": [...]}]}]}``), appended
as the runtime exports a batch. A single pretty-printed request per file is read too. Files are read
incrementally: polling a growing file (:meth:`OtlpFileTraceSource.wait_for`) only parses new lines.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from openinference.semconv.resource import ResourceAttributes

from geode.errors import TraceSourceError
from geode.traces.otlp_json import iter_spans
from geode.traces.records import SpanRecord, TraceRecord, group_traces
from geode.traces.sources.base import TraceFilter, TraceWait, normalize_trace_id, poll_until_complete

__all__ = ["OtlpFileTraceSource", "iter_otlp_spans"]

_SUFFIXES = (".jsonl", ".json", ".ndjson")


def iter_otlp_spans(request: Mapping[str, Any], *, project: str | None = None) -> Iterator[SpanRecord]:
    """The spans of one OTLP-JSON ``ExportTraceServiceRequest`` as records.

    Args:
        request: The decoded JSON request.
        project: Only spans exported under this Phoenix project (the ``openinference.project.name``
            resource attribute).

    Raises:
        TraceSourceError: The request or one of its spans is not valid OTLP-JSON.
    """
    if not isinstance(request.get("resourceSpans"), list):
        raise TraceSourceError("not an OTLP-JSON export request: no 'resourceSpans' list")
    for item in iter_spans(request):
        if project is None or item.resource.get(ResourceAttributes.PROJECT_NAME) == project:
            yield SpanRecord.from_otlp_json(item.span)


@dataclass
class _FileState:
    offset: int = 0
    inode: int = -1
    spans: list[SpanRecord] = field(default_factory=list[SpanRecord])
    bad_lines: int = 0


class OtlpFileTraceSource:
    """A :class:`~geode.traces.sources.TraceSource` over OTLP-JSON span files.

    Args:
        path: One file, or a folder whose ``*.jsonl``/``*.json``/``*.ndjson`` files are all read (the
            runtime's ``traces`` folder).
        project: Only spans exported under this Phoenix project; default: all.

    Example:
        >>> source = OtlpFileTraceSource(".geode/traces/spans.jsonl")
        >>> source.description
        'OTLP-JSON file .geode/traces/spans.jsonl'
    """

    def __init__(self, path: str | Path, *, project: str | None = None) -> None:
        self.path = Path(path)
        self.project = project
        self._lock = threading.Lock()
        self._files: dict[Path, _FileState] = {}

    @property
    def description(self) -> str:
        """Where the traces come from."""
        kind = "folder" if self.path.is_dir() else "file"
        scope = f", project {self.project!r}" if self.project is not None else ""
        return f"OTLP-JSON {kind} {self.path}{scope}"

    @property
    def bad_lines(self) -> int:
        """Lines skipped so far because they were not OTLP-JSON (a torn last line is not counted)."""
        return sum(state.bad_lines for state in self._files.values())

    def records(self) -> list[SpanRecord]:
        """Every span in the file(s), reading only what was appended since the last call.

        Raises:
            TraceSourceError: The path does not exist, or a file holds no OTLP-JSON at all.
        """
        with self._lock:
            spans: list[SpanRecord] = []
            for file in self._paths():
                spans.extend(self._refresh(file))
            return spans

    def traces(self, filter: TraceFilter | None = None) -> Iterator[TraceRecord]:
        """The traces matching ``filter``, newest first."""
        wanted = filter or TraceFilter()
        wanted.require_no_where(self.description)
        count = 0
        for trace in group_traces(self.records()):
            if wanted.limit is not None and count >= wanted.limit:
                return
            if wanted.matches(trace):
                count += 1
                yield trace

    def run_programs(self, filter: TraceFilter | None = None) -> Iterator[tuple[str, ...]]:
        """The program names of each run matching ``filter``, newest first."""
        return (trace.program_names for trace in self.traces(filter))

    def trace(self, trace_id: str) -> TraceRecord:
        """One trace by id.

        Raises:
            TraceSourceError: No span of that trace is in the file(s).
        """
        normalized = normalize_trace_id(trace_id)
        found = self._read([normalized])
        if normalized not in found:
            raise TraceSourceError(f"trace {normalized} is not in {self.description}")
        return found[normalized]

    def wait_for(
        self, trace_ids: Iterable[str], *, timeout_s: float = 60.0, poll_s: float = 0.1
    ) -> TraceWait:
        """Wait until these traces are complete in the file(s) (the runtime appends as it exports)."""
        return poll_until_complete(
            self._read, trace_ids, source=self.description, timeout_s=timeout_s, poll_s=poll_s
        )

    # -- internals ---------------------------------------------------------------------------------

    def _read(self, trace_ids: list[str]) -> Mapping[str, TraceRecord]:
        wanted = set(trace_ids)
        records = self.records() if self.path.exists() else []
        return {t.trace_id: t for t in group_traces(s for s in records if s.trace_id in wanted)}

    def _paths(self) -> list[Path]:
        if self.path.is_dir():
            return sorted(p for p in self.path.iterdir() if p.suffix in _SUFFIXES and p.is_file())
        if self.path.is_file():
            return [self.path]
        raise TraceSourceError(
            f"no OTLP-JSON file at {self.path}",
            hint="set tracing.otlp_file (GEODE_TRACING_OTLP_FILE) so the runtime writes one",
        )

    def _refresh(self, file: Path) -> list[SpanRecord]:
        state = self._files.setdefault(file, _FileState())
        try:
            stat = file.stat()
            if stat.st_ino != state.inode or stat.st_size < state.offset:
                # Replaced or truncated (rotation): start over.
                state.__init__()
                state.inode = stat.st_ino
            with file.open("rb") as handle:
                handle.seek(state.offset)
                chunk = handle.read()
        except OSError as err:
            raise TraceSourceError(f"cannot read {file}: {err}") from err
        if chunk:
            self._parse(file, state, chunk)
        return state.spans

    def _parse(self, file: Path, state: _FileState, chunk: bytes) -> None:
        if state.offset == 0 and b"\n" in chunk.strip() and not _parses(chunk.split(b"\n", 1)[0]):
            self._parse_document(file, state, chunk)  # one pretty-printed request, not JSON lines
            state.offset += len(chunk)
            return
        # Only complete lines are consumed: a line the writer is still appending waits for the next read.
        end = chunk.rfind(b"\n") + 1
        complete = chunk[:end]
        if chunk[end:].strip() and _parses(chunk[end:]):
            complete = chunk  # a last line without its newline, but whole (a prefix of JSON never parses)
        good = 0
        for line in complete.splitlines():
            if not line.strip():
                continue
            try:
                spans = list(iter_otlp_spans(json.loads(line), project=self.project))
                state.spans.extend(spans)
                good += 1
            except (ValueError, TraceSourceError, AttributeError, TypeError):
                state.bad_lines += 1
        if state.offset == 0 and good == 0 and state.bad_lines:
            raise TraceSourceError(
                f"{file} is not an OTLP-JSON lines file (no line holds a 'resourceSpans' request)"
            )
        state.offset += len(complete)

    def _parse_document(self, file: Path, state: _FileState, data: bytes) -> None:
        try:
            document = json.loads(data)
            state.spans.extend(iter_otlp_spans(document, project=self.project))
        except ValueError as err:
            raise TraceSourceError(
                f"{file} is neither OTLP-JSON lines nor one OTLP-JSON document: {err}"
            ) from err


def _parses(data: bytes) -> bool:
    try:
        json.loads(data)
    except ValueError:
        return False
    return True
