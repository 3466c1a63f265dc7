"""Requests sharing keep-alive and pipelined connections to a real `geode serve` do not cross (T12).

Injects: 32 requests over 4 persistent keep-alive connections (one ``httpx.Client`` per thread, at
most one connection each, 8 requests in turn on it, the threads at once) and 8 requests written
back to back on one raw socket (HTTP/1.1 pipelining: all sent before any answer is read), each with
its own question, session and user, to a `geode serve` process (uvicorn, not in-process ASGI).
Must hold: every response echoes its own question, pipelined responses come back in request order
on the one socket, and every span of every trace (read from the server's OTLP file after it stops)
carries only its own session, user and question.
"""

from __future__ import annotations

import json
import re
import socket
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from openinference.semconv.trace import SpanAttributes
from tests.integration.serve_helpers import PROGRAMS, serve

from geode.traces.otlp_json import decode_attributes, iter_spans, read_requests

from .conftest import refused_port

pytestmark = pytest.mark.reliability

_THREADS = 4
_PER_CONNECTION = 8
_PIPELINED = 8


def _body(n: int) -> dict[str, Any]:
    return {"question": f"question-{n}", "session_id": f"session-{n}", "user_id": f"user-{n}"}


def _keep_alive(url: str, first: int, results: dict[int, dict[str, Any]], errors: list[str]) -> None:
    # One connection per client: every request after the first reuses it (keep-alive).
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    try:
        with httpx.Client(base_url=url, timeout=60, limits=limits) as client:
            for n in range(first, first + _PER_CONNECTION):
                response = client.post("/programs/qa", json=_body(n))
                assert response.status_code == 200, response.text
                assert response.headers.get("connection", "").lower() != "close"
                results[n] = response.json()
    except Exception as err:  # reported by the test, which fails on any
        errors.append(f"connection from {first}: {err!r}")


def _read_response(reader: Any) -> tuple[int, dict[str, Any]]:
    status_line = reader.readline().decode("latin-1")
    status = int(status_line.split()[1])
    headers: dict[str, str] = {}
    while (line := reader.readline().decode("latin-1").strip()) != "":
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    assert "content-length" in headers, headers  # JSON answers are not chunked
    return status, json.loads(reader.read(int(headers["content-length"])))


def _pipelined(url: str, first: int) -> list[tuple[int, dict[str, Any]]]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    requests = b""
    for n in range(first, first + _PIPELINED):
        payload = json.dumps(_body(n)).encode()
        requests += (
            f"POST /programs/qa HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n"
        ).encode() + payload
    with socket.create_connection((host, port), timeout=60) as sock:
        sock.sendall(requests)  # every request before any answer is read
        reader = sock.makefile("rb")
        return [_read_response(reader) for _ in range(_PIPELINED)]


def test_t12_keep_alive_and_pipelined_requests_keep_their_own_values(tmp_path: Path) -> None:
    spans_file = tmp_path / "spans.jsonl"
    env = {
        "GEODE_TRACING_ENABLED": "true",
        "GEODE_TRACING_OTLP_FILE": str(spans_file),
        "GEODE_TRACING_ENDPOINT": f"http://127.0.0.1:{refused_port()}",  # only the file matters here
    }
    results: dict[int, dict[str, Any]] = {}
    errors: list[str] = []
    with serve([f"qa={PROGRAMS}:qa"], tmp_path / "home", env=env) as served:
        threads = [
            threading.Thread(target=_keep_alive, args=(served.url, t * _PER_CONNECTION, results, errors))
            for t in range(_THREADS)
        ]
        for thread in threads:
            thread.start()
        first = _THREADS * _PER_CONNECTION
        pipelined = _pipelined(served.url, first)  # while the keep-alive threads run
        for thread in threads:
            thread.join(120)
        served.stop()  # the spans of the last answers are flushed before the process exits
    assert not errors, errors
    for offset, (status, body) in enumerate(pipelined):
        assert status == 200, body
        results[first + offset] = body
    total = first + _PIPELINED
    assert sorted(results) == list(range(total))
    spans: dict[str, list[dict[str, Any]]] = {}
    for request in read_requests(spans_file):
        for item in iter_spans(request):
            attributes = decode_attributes(item.span.get("attributes") or ())
            spans.setdefault(str(item.span["traceId"]), []).append({"name": item.span["name"], **attributes})
    checked = 0
    for n, body in results.items():
        assert body["outputs"]["answer"] == f"echo: question-{n}"
        mine = spans.get(body["trace_id"], [])
        assert len(mine) >= 3, (n, [s["name"] for s in mine])
        for span in mine:
            assert span.get(SpanAttributes.SESSION_ID) == f"session-{n}", span["name"]
            assert span.get(SpanAttributes.USER_ID) == f"user-{n}", span["name"]
            mentioned = {int(m) for m in re.findall(r"(?:question|session|user)-(\d+)", json.dumps(span))}
            assert mentioned <= {n}, (span["name"], mentioned)
            checked += 1
    print(
        f"\n[figure] T12: {total} requests ({_THREADS} keep-alive connections x {_PER_CONNECTION}, "
        f"{_PIPELINED} pipelined on one socket), {checked} spans checked: none carries another "
        "request's session, user or question"
    )
