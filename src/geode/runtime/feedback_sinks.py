"""A feedback record and where it is stored: the local log, and Phoenix as a span annotation.

Used by ``Runtime.feedback`` (through the durable outbox), ``POST /feedback`` and the commands that read
feedback back. Every record is appended to a local JSON-lines log under the Geode home first (durable,
and what ``geode compare-versions`` reads when Phoenix is not reachable); it is then sent to Phoenix with
``arize-phoenix-client`` (``spans.add_span_annotation``, or ``traces.add_trace_annotation`` when the
root span is not known to this replica). A Phoenix that is down, refusing or slow costs the caller at
most ``timeout_s`` and never fails the request: the answer says where the record went.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

__all__ = [
    "AnnotatorKind",
    "FeedbackLog",
    "FeedbackRecord",
    "FeedbackSink",
    "PhoenixFeedback",
    "read_feedback",
]

# The server's logger, as when this module lived in the serving package: log filters keep working.
logger = logging.getLogger("geode.serve")

AnnotatorKind = Literal["HUMAN", "CODE", "LLM"]


@dataclass(frozen=True)
class FeedbackRecord:
    """One piece of feedback on one run."""

    trace_id: str
    name: str
    span_id: str | None = None
    """The run's root span, when the server that answered still remembers it."""
    score: float | None = None
    label: str | None = None
    explanation: str | None = None
    annotator_kind: AnnotatorKind = "HUMAN"
    program: str | None = None
    version: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict[str, Any])
    at: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        data = asdict(self)
        data["metadata"] = dict(self.metadata)
        return data


class FeedbackSink(Protocol):
    """Somewhere feedback can be sent; :meth:`send` raises when it could not be stored."""

    name: str

    def send(self, record: FeedbackRecord) -> None:
        """Store the record (blocking, bounded by the sink's own timeout)."""
        ...


class FeedbackLog:
    """An append-only JSON-lines file of feedback (thread-safe within a process).

    Args:
        path: The file, created with its folder on first write.
        max_bytes: When the file grows past this, it is renamed to ``<name>.1`` (one old file is kept).
    """

    name = "local"

    def __init__(self, path: Path, *, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._lock = threading.Lock()

    def send(self, record: FeedbackRecord) -> None:
        """Append a record."""
        line = json.dumps(record.to_json(), ensure_ascii=False, default=str) + "\n"
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.path.exists() and self.path.stat().st_size > self.max_bytes:
                self.path.replace(self.path.with_name(self.path.name + ".1"))
            with self.path.open("a", encoding="utf-8") as fh:
                fh.write(line)


def read_feedback(path: Path) -> Iterator[FeedbackRecord]:
    """Records from a :class:`FeedbackLog` file (and its rotated ``.1``), skipping damaged lines."""
    for candidate in (path.with_name(path.name + ".1"), path):
        if not candidate.exists():
            continue
        with candidate.open(encoding="utf-8") as fh:
            for line in fh:
                try:
                    data = json.loads(line)
                    yield FeedbackRecord(**data)
                except (json.JSONDecodeError, TypeError):
                    continue


class PhoenixFeedback:
    """Sends feedback to Phoenix as annotations (``annotation.name`` = the feedback's name).

    Args:
        base_url: Phoenix's URL, e.g. ``http://127.0.0.1:6006``.
        api_key: For a Phoenix with authentication.
        timeout_s: Per-request timeout; feedback never waits longer.
    """

    name = "phoenix"

    def __init__(self, base_url: str, *, api_key: str | None = None, timeout_s: float = 2.0) -> None:
        import httpx

        self.base_url = base_url
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
        self._http = httpx.Client(base_url=base_url, timeout=timeout_s, headers=headers)
        self._client: Any = None
        self._lock = threading.Lock()

    def _phoenix(self) -> Any:
        # Importing phoenix.client takes seconds (it pulls in part of the Phoenix server package when
        # that is installed): pay it on the first feedback, in a worker thread, not at start-up.
        with self._lock:
            if self._client is None:
                from phoenix.client import Client

                self._client = Client(base_url=self.base_url, http_client=self._http)
            return self._client

    def send(self, record: FeedbackRecord) -> None:
        """Annotate the run's root span (or its trace) in Phoenix."""
        client = self._phoenix()
        metadata = {**record.metadata, "program": record.program, "version": record.version}
        common: dict[str, Any] = {
            "annotation_name": record.name,
            "annotator_kind": record.annotator_kind,
            "label": record.label,
            "score": record.score,
            "explanation": record.explanation,
            "metadata": {k: v for k, v in metadata.items() if v is not None},
        }
        if record.span_id:
            # sync=False: Phoenix queues it, so a span still on its way to Phoenix is not refused.
            client.spans.add_span_annotation(span_id=record.span_id, sync=False, **common)
        else:
            client.traces.add_trace_annotation(trace_id=record.trace_id, sync=False, **common)

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._http.close()
