"""Schemathesis against ``geode serve``'s OpenAPI: any request the schema allows, or breaks, gets no 5xx.

The app is the real one (``create_app``) hosting a Predict program and a ReAct agent on a scripted LM, in
process (ASGI). For every operation, Schemathesis draws requests from the OpenAPI schema, valid ones
(positive) and ones that break it (negative: wrong types, missing fields, extra keys, bad path
parameters). Must hold: no response is a 5xx; every response matches the schema's status codes, content
types and body schemas; every error body is Geode's ``{"error": {"code", "message"}}`` with no traceback.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dspy
import pytest
from tests.tiers import require_tier

from geode.runtime.runtime import Runtime
from geode.runtime.serving import HostedProgram, create_app
from geode.runtime.settings import ServeSettings, Settings, TracingSettings
from geode.testing import ScriptedLM

from .conftest import Timings

pytestmark = pytest.mark.fuzz
require_tier("fuzz", import_name="schemathesis")

import schemathesis  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402

# Per operation and mode; the whole file makes ~9 x 2 x this many requests.
EXAMPLES = int(os.environ.get("GEODE_FUZZ_API_EXAMPLES", "40"))
CHECKS = [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
]


def _answer(messages: list[dict[str, str]]) -> dict[str, Any]:
    return {"answer": "ok"}


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Any]:
    # One app per test: Schemathesis ends an ASGI app's lifespan after each test (the app then drains).
    home = tmp_path / "home"
    runtime = Runtime(
        lm=ScriptedLM(_answer), settings=Settings(home=home, tracing=TracingSettings(enabled=False))
    )
    app = create_app(runtime, [HostedProgram(dspy.Predict("question -> answer"), name="qa")], ServeSettings())
    yield schemathesis.openapi.from_asgi("/openapi.json", app)
    runtime.close()


# Operations that take parameters or a body: only these have requests that break the schema.
WITH_INPUT = [
    "POST /feedback",
    "GET /sessions/{session_id}",
    "DELETE /sessions/{session_id}",
    "POST /programs/qa",
    "POST /programs/qa/stream",
]


def _labels() -> list[str]:
    return [
        "GET /health",
        "GET /ready",
        "GET /metrics",
        "GET /programs",
        "POST /feedback",
        "GET /sessions/{session_id}",
        "DELETE /sessions/{session_id}",
        "POST /programs/qa",
        "POST /programs/qa/stream",
    ]


def test_the_schema_lists_every_operation_fuzzed(api: Any) -> None:
    found = {f"{op.ok().method.upper()} {op.ok().path}" for op in api.get_all_operations()}
    assert found == set(_labels())


@pytest.mark.parametrize(
    ("label", "mode"),
    [(label, GenerationMode.POSITIVE) for label in _labels()]
    + [(label, GenerationMode.NEGATIVE) for label in WITH_INPUT],
    ids=lambda value: value.value if isinstance(value, GenerationMode) else value,
)
def test_no_request_gets_a_5xx_and_every_response_matches_the_schema(api: Any, label: str, mode: Any) -> None:
    from schemathesis import checks

    method, path = label.split(" ", 1)
    operation = api[path][method]
    selected = [getattr(checks, name) for name in CHECKS]
    timings = Timings(f"{label} ({mode.value})")
    statuses: dict[int, int] = {}

    @settings(max_examples=EXAMPLES)
    @given(case=operation.as_strategy(generation_mode=mode))
    def check(case: Any) -> None:
        with timings.measure(lambda: f"{case.method} {case.formatted_path}"):
            response = case.call()
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        case.validate_response(response, checks=selected)
        if response.status_code >= 400:
            assert "Traceback" not in response.text and 'File "' not in response.text
            if path != "/ready":  # its 503 (draining) is its status body, documented as such
                body = json.loads(response.text)
                error = body.get("error") if isinstance(body, dict) else None
                assert isinstance(error, dict), response.text[:300]
                assert isinstance(error.get("code"), str) and isinstance(error.get("message"), str)

    check()
    print(f"\n[figure] {label} ({mode.value}): statuses {dict(sorted(statuses.items()))}")
    timings.report(5.0)
