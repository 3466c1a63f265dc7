"""A program filter accepts the program's name or any alias, on every source, Phoenix included.

Phoenix's REST ``attribute`` filter matches scalar attributes only and ``geode.program.aliases`` is a list,
so :class:`PhoenixTraceSource` matches the program on each root span itself. These tests drive it through
an in-process stand-in for ``GET /v1/projects/{project}/spans`` that applies the query parameters the way
Phoenix does (``parent_id=null``, ``attribute=key:value`` on scalars, newest first, cursor paging); the
real server is exercised in tests/integration/test_aliases_phoenix.py.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from geode.traces.records import SpanRecord
from geode.traces.sources import (
    InMemoryTraceSource,
    PhoenixTraceSource,
    TraceFilter,
    programs_with_runs,
)
from geode.traces.sources.phoenix import root_params

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)

# (program name, aliases, session) of each run, oldest first.
RUNS: list[tuple[str, list[str], str]] = [
    ("trial-agent", ["app.py:agent", "Agent"], "s-1"),
    ("other-agent", ["app.py:other", "Agent"], "s-1"),
    ("trial-agent", ["Agent"], "s-2"),  # started as an instance: no reference alias
    ("qa", ["geode.examples.qa:program", "Predict"], "s-2"),
    ("trial-agent", ["app.py:agent", "Agent"], "s-3"),
]


def _phoenix_spans() -> list[dict[str, Any]]:
    """Each run as Phoenix's REST API returns it: a root with the program attributes and one child."""
    spans: list[dict[str, Any]] = []
    for i, (name, aliases, session) in enumerate(RUNS):
        trace_id = f"{i + 1:032x}"
        start = T0 + timedelta(minutes=i)
        root = {
            "context": {"trace_id": trace_id, "span_id": f"{i + 1:016x}"},
            "name": name,
            "span_kind": "CHAIN",
            "parent_id": None,
            "start_time": start.isoformat(),
            "end_time": (start + timedelta(seconds=1)).isoformat(),
            "status_code": "OK",
            "attributes": {
                "geode.program.name": name,
                "geode.program.aliases": aliases,
                "session.id": session,
            },
        }
        child = {
            **root,
            "context": {"trace_id": trace_id, "span_id": f"{i + 101:016x}"},
            "name": "predict",
            "parent_id": f"{i + 1:016x}",
            "attributes": {"geode.predictor.name": "predict"},
        }
        spans += [root, child]
    return spans


class FakePhoenixSpans:
    """``GET /v1/projects/{project}/spans`` over fixed spans, with Phoenix's filters and cursor paging."""

    def __init__(self, spans: list[dict[str, Any]]) -> None:
        self.spans = spans
        self.requests: list[httpx.QueryParams] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        params = request.url.params
        self.requests.append(params)
        rows = list(self.spans)
        if params.get("parent_id") == "null":
            rows = [s for s in rows if s["parent_id"] is None]
        if "trace_id" in params:
            wanted = set(params.get_list("trace_id"))
            rows = [s for s in rows if s["context"]["trace_id"] in wanted]
        for condition in params.get_list("attribute"):
            key, value = condition.split(":", 1)
            # Phoenix compares the attribute's JSON text with a scalar: a list never matches.
            rows = [s for s in rows if s["attributes"].get(key) == value]
        rows.sort(key=lambda s: s["start_time"], reverse=params.get("order") == "desc")
        offset = int(params.get("cursor") or 0)
        limit = int(params.get("limit") or 1000)
        page = rows[offset : offset + limit]
        more = offset + limit < len(rows)
        body = {"data": page, "next_cursor": str(offset + limit) if more else None}
        return httpx.Response(200, content=json.dumps(body), headers={"content-type": "application/json"})


@pytest.fixture
def phoenix() -> tuple[PhoenixTraceSource, FakePhoenixSpans]:
    fake = FakePhoenixSpans(_phoenix_spans())
    source = PhoenixTraceSource(
        "http://phoenix.test", "geode", page_size=2, transport=httpx.MockTransport(fake)
    )
    return source, fake


def _memory() -> InMemoryTraceSource:
    return InMemoryTraceSource([SpanRecord.from_phoenix(s) for s in _phoenix_spans()])


def test_the_program_is_not_sent_to_phoenix_as_an_attribute() -> None:
    # A list attribute cannot be matched by Phoenix: sending the alias there would find nothing.
    params = root_params(TraceFilter(program="app.py:agent", session_id="s-1", status="OK"))
    assert params["attribute"] == ["session.id:s-1"]
    assert params["parent_id"] == "null" and params["status_code"] == ["OK"]
    assert "attribute" not in root_params(TraceFilter(program="qa"))


@pytest.mark.parametrize(
    ("asked", "runs"),
    [
        ("trial-agent", [5, 3, 1]),  # the name
        ("app.py:agent", [5, 1]),  # the reference: only the runs started by it
        ("Agent", [5, 3, 2, 1]),  # the class name: runs of two programs
        ("geode.examples.qa:program", [4]),
        ("nobody", []),
    ],
)
def test_phoenix_matches_names_and_aliases_like_the_local_sources(
    phoenix: tuple[PhoenixTraceSource, FakePhoenixSpans], asked: str, runs: list[int]
) -> None:
    source, _ = phoenix
    wanted = TraceFilter(program=asked)
    found = [int(t.trace_id, 16) for t in source.traces(wanted)]
    assert found == runs
    # Whole traces come back, and the local sources agree run for run.
    assert all(len(t.spans) == 2 for t in source.traces(wanted))
    assert [int(t.trace_id, 16) for t in _memory().traces(wanted)] == runs


def test_phoenix_applies_the_other_conditions_and_the_limit(
    phoenix: tuple[PhoenixTraceSource, FakePhoenixSpans],
) -> None:
    source, fake = phoenix
    assert [int(t.trace_id, 16) for t in source.traces(TraceFilter(program="Agent", session_id="s-1"))] == [
        2,
        1,
    ]
    fake.requests.clear()
    newest = list(source.traces(TraceFilter(program="trial-agent", limit=1)))
    assert [int(t.trace_id, 16) for t in newest] == [5]
    # It stopped at the first page of roots that held a match, plus one request for the trace itself.
    assert len([r for r in fake.requests if r.get("parent_id") == "null"]) == 1


def test_which_programs_an_alias_names(phoenix: tuple[PhoenixTraceSource, FakePhoenixSpans]) -> None:
    source, fake = phoenix
    for reader in (source, _memory()):
        both = programs_with_runs(reader, TraceFilter(program="Agent"))
        assert [(p.name, p.runs) for p in both] == [("trial-agent", 3), ("other-agent", 1)]
        assert str(both[0]) == "trial-agent (also app.py:agent, Agent)"
        one = programs_with_runs(reader, TraceFilter(program="app.py:agent"))
        assert [p.name for p in one] == ["trial-agent"]
        every = programs_with_runs(reader, TraceFilter(limit=3))
        assert [p.name for p in every] == ["trial-agent", "qa"]
    # Phoenix answers this from root spans alone: no trace is fetched whole.
    fake.requests.clear()
    programs_with_runs(source)
    assert fake.requests and all(r.get("parent_id") == "null" for r in fake.requests)
