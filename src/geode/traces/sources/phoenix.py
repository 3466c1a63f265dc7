"""Traces read back from a Phoenix server with ``arize-phoenix-client``.

Runs are found by their root spans, paged through newest first with Phoenix's cursor (its REST API,
``GET /v1/projects/{project}/spans``), so a large project streams in pages instead of loading at once;
each page's traces are then fetched whole by trace id. A program filter accepts the program's name or
any of its aliases (``geode.program.aliases``, a list Phoenix's ``attribute`` filter cannot match), so it
is checked on each root span here while Phoenix applies the session, status and time conditions. ``where`` filters go through the client's
``SpanQuery`` DSL (``Client.spans.get_spans_dataframe``). Phoenix ingests asynchronously (about
125 spans/s on a small machine), so code that reads right after a run uses :meth:`wait_for`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Final, cast

import httpx

from geode.errors import TraceSourceError
from geode.traces.records import SpanRecord, TraceRecord, group_traces
from geode.traces.sources.base import TraceFilter, TraceWait, normalize_trace_id, poll_until_complete
from geode.traces.vocab import SpanAttributes

if TYPE_CHECKING:
    from phoenix.client import Client

__all__ = ["PhoenixTraceSource", "phoenix_base_url", "root_params"]

_MAX_PAGE: Final = 1000
"""Phoenix's largest page for ``GET /v1/projects/{project}/spans``."""
_IDS_PER_REQUEST: Final = 100
"""Trace ids per request: keeps the query string well under common URL limits."""


def phoenix_base_url(endpoint: str) -> str:
    """Phoenix's base URL from a collector endpoint (``http://host:6006/v1/traces`` → ``http://host:6006``).

    Example:
        >>> phoenix_base_url("http://127.0.0.1:6006/v1/traces")
        'http://127.0.0.1:6006'
    """
    url = endpoint.strip().rstrip("/")
    return url.removesuffix("/v1/traces").rstrip("/")


class PhoenixTraceSource:
    """A :class:`~geode.traces.sources.TraceSource` over one Phoenix project.

    Args:
        url: Phoenix's base URL (``http://127.0.0.1:6006``); a collector endpoint ending in ``/v1/traces``
            works too.
        project: The project to read.
        api_key: For a Phoenix with authentication enabled.
        timeout_s: Per-request timeout.
        page_size: Spans per request while paging (at most 1000).
        transport: An ``httpx`` transport to send requests through (a proxy, custom TLS, an in-process
            Phoenix in tests); default: plain HTTP.

    Example:
        >>> source = PhoenixTraceSource("http://127.0.0.1:6006", project="geode")
        >>> source.description
        "Phoenix at http://127.0.0.1:6006, project 'geode'"
    """

    def __init__(
        self,
        url: str,
        project: str = "geode",
        *,
        api_key: str | None = None,
        timeout_s: float = 30.0,
        page_size: int = _MAX_PAGE,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not 1 <= page_size <= _MAX_PAGE:
            raise TraceSourceError(f"page_size must be between 1 and {_MAX_PAGE}, got {page_size}")
        if not project or any(c in project for c in "/?#"):
            raise TraceSourceError(f"invalid Phoenix project name {project!r}")
        self.url = phoenix_base_url(url)
        self.project = project
        self.page_size = page_size
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout_s, transport=transport)
        self._client: Client | None = None

    @property
    def description(self) -> str:
        """Where the traces come from."""
        return f"Phoenix at {self.url}, project {self.project!r}"

    @property
    def client(self) -> Client:
        """A ``phoenix.client.Client`` sharing this source's HTTP connections (for ``where`` queries).

        Importing it is slow when the Phoenix server package is installed in the same environment: any
        ``phoenix.*`` import runs the server package's ``__init__`` (20 s of CPU measured here). Only
        ``where`` filters need it; everything else reads Phoenix's REST API directly.
        """
        if self._client is None:
            from phoenix.client import Client

            self._client = Client(http_client=self._http)
        return self._client

    def close(self) -> None:
        """Close the HTTP connections."""
        self._http.close()

    def __enter__(self) -> PhoenixTraceSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading -----------------------------------------------------------------------------------

    def traces(self, filter: TraceFilter | None = None) -> Iterator[TraceRecord]:
        """The traces matching ``filter``, newest first, fetched a page at a time.

        Raises:
            TraceSourceError: Phoenix is unreachable, the project does not exist, or it rejected the filter.
        """
        wanted = filter or TraceFilter()
        if wanted.where is not None:
            yield from self._traces_where(wanted)
            return
        count = 0
        for roots in self._root_pages(wanted):
            for trace in self._fetch_ordered([s.trace_id for s in roots]):
                if not wanted.matches(trace):
                    continue
                yield trace
                count += 1
                if wanted.limit is not None and count >= wanted.limit:
                    return

    def run_programs(self, filter: TraceFilter | None = None) -> Iterator[tuple[str, ...]]:
        """The program names of each run matching ``filter``, newest first, read from root spans only.

        Raises:
            TraceSourceError: Phoenix is unreachable, the project does not exist, or it rejected the filter.
        """
        wanted = filter or TraceFilter()
        if wanted.where is not None:
            yield from (trace.program_names for trace in self._traces_where(wanted))
            return
        count = 0
        for roots in self._root_pages(wanted):
            for root in roots:
                yield root.program_names
                count += 1
                if wanted.limit is not None and count >= wanted.limit:
                    return

    def trace(self, trace_id: str) -> TraceRecord:
        """One trace by id.

        Raises:
            TraceSourceError: Phoenix has no span of that trace (yet: it ingests asynchronously).
        """
        normalized = normalize_trace_id(trace_id)
        found = self._fetch([normalized])
        if normalized not in found:
            raise TraceSourceError(
                f"trace {normalized} is not in {self.description}",
                hint="Phoenix ingests spans asynchronously; retry in a few seconds, or check the project",
            )
        return found[normalized]

    def wait_for(
        self, trace_ids: Iterable[str], *, timeout_s: float = 60.0, poll_s: float = 0.25
    ) -> TraceWait:
        """Poll Phoenix until exactly these traces are visible and complete, or the deadline passes.

        A project Phoenix has not created yet (it does so when the first span arrives) counts as
        nothing visible yet, not as an error.
        """

        def read(pending: list[str]) -> dict[str, TraceRecord]:
            try:
                return self._fetch(pending)
            except _NoSuchProjectError:
                return {}

        return poll_until_complete(
            read, trace_ids, source=self.description, timeout_s=timeout_s, poll_s=poll_s, settle=True
        )

    def spans(self, trace_ids: Iterable[str]) -> list[SpanRecord]:
        """Every span Phoenix holds for these traces."""
        ids = [normalize_trace_id(t) for t in trace_ids]
        spans: list[SpanRecord] = []
        for start in range(0, len(ids), _IDS_PER_REQUEST):
            batch = ids[start : start + _IDS_PER_REQUEST]
            for page in self._pages({"trace_id": batch}):
                spans.extend(page)
        return spans

    def projects(self) -> list[str]:
        """Names of the projects on the server."""
        names: list[str] = []
        cursor: str | None = None
        while True:
            payload = self._get("v1/projects", {"limit": 100, **({"cursor": cursor} if cursor else {})})
            names += [str(p.get("name")) for p in payload.get("data") or ()]
            cursor = payload.get("next_cursor")
            if not cursor:
                return names

    # -- internals ---------------------------------------------------------------------------------

    def _root_pages(self, wanted: TraceFilter) -> Iterator[list[SpanRecord]]:
        """Pages of the root spans that pass ``wanted`` (except ``where``), newest first.

        Phoenix's ``attribute`` filter matches scalars only, and a program's aliases are a list, so the
        program condition is checked here on each root span; the others are Phoenix's to apply.
        """
        local = wanted.program is not None
        # Without a local condition every root read is a run wanted: read no more than asked for.
        page = self.page_size if local else min(self.page_size, wanted.limit or self.page_size)
        for roots in self._pages(root_params(wanted), page_size=page):
            kept = [s for s in roots if wanted.matches_program(s.program_names)] if local else roots
            if kept:
                yield kept

    def _pages(
        self, params: Mapping[str, Any], *, page_size: int | None = None
    ) -> Iterator[list[SpanRecord]]:
        """Span pages for a query of ``GET /v1/projects/{project}/spans``, following the cursor."""
        cursor: str | None = None
        while True:
            query = {**params, "limit": page_size or self.page_size}
            if cursor:
                query["cursor"] = cursor
            payload = self._get(f"v1/projects/{self.project}/spans", query)
            data = cast(list[dict[str, Any]], payload.get("data") or [])
            if data:
                yield [SpanRecord.from_phoenix(span) for span in data]
            cursor = payload.get("next_cursor")
            if not cursor or not data:
                return

    def _get(self, path: str, params: Mapping[str, Any]) -> dict[str, Any]:
        try:
            response = self._http.get(path, params=params, headers={"accept": "application/json"})
            response.raise_for_status()
            return cast(dict[str, Any], response.json())
        except (httpx.HTTPError, json.JSONDecodeError) as err:
            raise self._error(err) from err

    def _fetch(self, trace_ids: list[str]) -> dict[str, TraceRecord]:
        return {t.trace_id: t for t in group_traces(self.spans(trace_ids))}

    def _fetch_ordered(self, trace_ids: list[str]) -> list[TraceRecord]:
        found = self._fetch(trace_ids)
        return [found[t] for t in dict.fromkeys(trace_ids) if t in found]

    def _traces_where(self, wanted: TraceFilter) -> Iterator[TraceRecord]:
        from phoenix.client.types.spans import SpanQuery

        query = SpanQuery().where(cast(str, wanted.where)).select("context.trace_id")
        try:
            frame = self.client.spans.get_spans_dataframe(
                query=query,
                project_identifier=self.project,
                start_time=wanted.start,
                end_time=wanted.end,
                limit=1_000_000,
                timeout=int(self._http.timeout.read or 30),
            )
        except httpx.HTTPError as err:
            raise self._error(err) from err
        column = "context.trace_id"
        trace_ids: list[str] = []
        if len(frame):
            # pandas is partly untyped
            values = cast(
                "Iterable[object]",
                frame[column] if column in frame.columns else frame.index.get_level_values(column),
            )
            trace_ids = list(dict.fromkeys(str(v) for v in values))
        matched: list[TraceRecord] = []
        for start in range(0, len(trace_ids), _IDS_PER_REQUEST):
            matched.extend(self._fetch_ordered(trace_ids[start : start + _IDS_PER_REQUEST]))
        matched = [t for t in matched if wanted.matches(t)]
        matched.sort(key=lambda t: t.start_time, reverse=True)
        yield from matched[: wanted.limit]

    def _error(self, err: Exception) -> TraceSourceError:
        if isinstance(err, httpx.HTTPStatusError):
            status = err.response.status_code
            body = err.response.text[:300]
            if status == 404 and "project" in body.lower():
                return _NoSuchProjectError(
                    f"{self.description}: no such project",
                    hint=f"projects there: {', '.join(self._project_names_or_empty()) or 'none'}",
                )
            if status in (401, 403):
                return TraceSourceError(
                    f"{self.description} refused the request ({status})", hint="pass the Phoenix API key"
                )
            if status == 422:
                return TraceSourceError(f"{self.description} rejected the query: {body}")
            return TraceSourceError(f"{self.description} answered {status}: {body}")
        if isinstance(err, httpx.TimeoutException):
            return TraceSourceError(f"{self.description} timed out", hint="Phoenix may be busy; retry")
        if isinstance(err, httpx.TransportError):
            return TraceSourceError(
                f"cannot reach {self.description}: {err}", hint="start it with `geode phoenix`"
            )
        return TraceSourceError(f"{self.description}: {err}")

    def _project_names_or_empty(self) -> list[str]:
        try:
            return self.projects()
        except TraceSourceError:
            return []


def root_params(wanted: TraceFilter) -> dict[str, Any]:
    """Query parameters of ``GET /v1/projects/{project}/spans`` for the root spans of runs ``wanted`` reads.

    Everything but the program (matched on each root span, see :meth:`PhoenixTraceSource.traces`) and
    ``where`` (a ``SpanQuery``) is left to Phoenix.

    Example:
        >>> root_params(TraceFilter(program="qa", session_id="s-1"))["attribute"]
        ['session.id:s-1']
    """
    params: dict[str, Any] = {"parent_id": "null", "sort": "start_time", "order": "desc"}
    if wanted.session_id is not None:
        params["attribute"] = [f"{SpanAttributes.SESSION_ID}:{_attribute_param(wanted.session_id)}"]
    if wanted.status is not None:
        params["status_code"] = [wanted.status]
    if wanted.start is not None:
        params["start_time"] = wanted.start.isoformat()
    if wanted.end is not None:
        params["end_time"] = wanted.end.isoformat()
    return params


class _NoSuchProjectError(TraceSourceError):
    """Phoenix has no project of that name (yet)."""


def _attribute_param(value: str) -> str:
    """Encode a string for Phoenix's ``attribute=key:value`` filter, which parses JSON-looking values.

    A string that JSON would read as a number, boolean or null is JSON-quoted so it still matches the
    stored string, the same rule ``arize-phoenix-client`` applies.
    """
    if value == "":
        return json.dumps(value)
    try:
        parsed = json.loads(value)
    except ValueError:
        return value
    return value if isinstance(parsed, str) else json.dumps(value)
