"""`geode serve` in a real uvicorn process: curl, an OpenAPI-driven client and a browser page.

Not marked slow: the server starts in a few seconds, so CI runs it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

from .serve_helpers import PROGRAMS, serve


def _call_from_openapi(base: str, operation_id: str, arguments: dict[str, Any]) -> httpx.Response:
    """A minimal OpenAPI client: find the operation, check the body against its schema, call it."""
    doc = httpx.get(f"{base}/openapi.json").json()
    for path, methods in doc["paths"].items():
        for method, operation in methods.items():
            if operation.get("operationId") != operation_id:
                continue
            ref = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
            schema = doc["components"]["schemas"][ref.rsplit("/", 1)[1]]
            missing = set(schema.get("required", [])) - set(arguments)
            assert not missing, f"missing required fields {missing}"
            unknown = set(arguments) - set(schema["properties"])
            assert not unknown, f"unknown fields {unknown}"
            return httpx.request(method.upper(), f"{base}{path}", json=arguments)
    raise AssertionError(f"no operation {operation_id!r}")


def test_geode_serve_answers_curl_openapi_clients_and_browsers(tmp_path: Path) -> None:
    with serve([f"qa={PROGRAMS}:qa", f"support={PROGRAMS}:injected_agent"], tmp_path / "home") as served:
        # At start the server says where everything is.
        started = served.output()
        for path in ("/programs/qa", "/programs/qa/stream", "/programs/support", "/feedback", "/docs"):
            assert f"{served.url}{path}" in started, started[-2000:]
        curl = shutil.which("curl")
        if curl is not None:
            out = subprocess.run(
                [
                    curl,
                    "-s",
                    "-i",
                    "-X",
                    "POST",
                    f"{served.url}/programs/qa",
                    "-H",
                    "Content-Type: application/json",
                    "-d",
                    '{"question": "from curl"}',
                ],
                capture_output=True,
                text=True,
                timeout=30,
                check=True,
            ).stdout
            head, _, body = out.partition("\n\n")
            assert "200 OK" in head.splitlines()[0] and "x-trace-id:" in head.lower()
            assert json.loads(body)["outputs"] == {"answer": "echo: from curl"}

        response = _call_from_openapi(served.url, "run_qa", {"question": "from openapi", "session_id": "s1"})
        assert response.status_code == 200 and response.json()["outputs"]["answer"] == "echo: from openapi"
        assert len(response.headers["X-Trace-Id"]) == 32

        page = httpx.get(f"{served.url}/docs")
        assert page.status_code == 200 and "swagger-ui" in page.text.lower()

        agent = httpx.post(
            f"{served.url}/programs/support", json={"question": "How long does shipping take?"}, timeout=30
        )
        assert agent.status_code == 200 and agent.json()["outputs"]["answer"] == "3 days"

        with httpx.stream(
            "POST", f"{served.url}/programs/qa/stream", json={"question": "streamed"}
        ) as stream:
            text = "".join(stream.iter_text())
        assert "event: prediction" in text and "echo: streamed" in text

        metrics = httpx.get(f"{served.url}/metrics").text
        assert 'geode_requests_total{program="qa",status="200",version="base"}' in metrics
        assert _connection_survives_idle(served.url, idle_s=6.0)
        seconds = served.stop()
    assert seconds < 30


def _connection_survives_idle(base: str, *, idle_s: float) -> bool:
    """Whether a keep-alive connection idle for ``idle_s`` is still the one the next request uses.

    uvicorn's default (5 s) closes it; a server that closes a connection as the client reuses it fails
    that request, which is how overloaded clients lost requests (GEODE_SERVE_KEEP_ALIVE_S, 90 s).
    """
    limits = httpx.Limits(keepalive_expiry=60)
    with httpx.Client(base_url=base, limits=limits) as client:

        def local_port() -> int:
            response = client.get("/health")
            assert response.status_code == 200
            return response.extensions["network_stream"].get_extra_info("client_addr")[1]

        first = local_port()
        time.sleep(idle_s)
        return local_port() == first
