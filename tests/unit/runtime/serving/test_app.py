"""The served HTTP API, end to end in process (TestClient), on ScriptedLM."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import MutableMapping
from typing import Any

import dspy
import pytest
from dspy.signatures.signature import ensure_signature
from fastapi.testclient import TestClient
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic import SecretStr

from geode.errors import ConfigError
from geode.runtime.phoenix import find_free_port
from geode.runtime.runtime import Runtime
from geode.runtime.serving import Candidate, HostedProgram, create_app
from geode.runtime.serving.feedback import FeedbackRecord
from geode.runtime.settings import PhoenixSettings, Settings, TracingSettings
from geode.testing import ScriptedLM
from geode.traces.vocab import GeodeAttributes, SpanAttributes

from .conftest import AppFactory, echo_lm

KEY = "k" * 24


def _root(exporter: InMemorySpanExporter, trace_id: str) -> Any:
    spans = [
        s
        for s in exporter.get_finished_spans()
        if s.context and format(s.context.trace_id, "032x") == trace_id
    ]
    roots = [s for s in spans if s.parent is None]
    assert len(roots) == 1, [s.name for s in spans]
    return roots[0], spans


def test_run_returns_outputs_trace_id_and_version(
    make_client: AppFactory, tracing: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    client, _ = make_client()
    response = client.post("/programs/qa", json={"question": "capital of France?"})
    assert response.status_code == 200
    body = response.json()
    assert body["outputs"] == {"answer": "echo: capital of France?"}
    assert body["version"] == "base" and response.headers["X-Geode-Version"] == "base"
    assert response.headers["X-Trace-Id"] == body["trace_id"]
    assert body["usage"]["total_tokens"] > 0
    root, spans = _root(tracing[1], body["trace_id"])
    assert root.attributes[GeodeAttributes.PROGRAM_NAME] == "qa"
    assert root.attributes[GeodeAttributes.SERVE_ROLE] == "primary"
    assert json.loads(root.attributes[SpanAttributes.OUTPUT_VALUE]) == body["outputs"]
    assert {s.attributes.get(SpanAttributes.OPENINFERENCE_SPAN_KIND) for s in spans} >= {"CHAIN", "LLM"}


def test_program_routes_match_first_and_the_document_keeps_the_order_routes_were_added(
    make_client: AppFactory,
) -> None:
    client, app = make_client()

    @app.get("/added-later")
    async def added_later() -> dict[str, str]:
        return {"ok": "yes"}

    paths = [str(getattr(route, "path", "")) for route in app.routes]
    assert paths[:2] == ["/programs/qa", "/programs/qa/stream"]
    documented = list(client.get("/openapi.json").json()["paths"])
    assert documented == [
        "/health",
        "/ready",
        "/metrics",
        "/programs",
        "/feedback",
        "/sessions/{session_id}",
        "/programs/qa",
        "/programs/qa/stream",
        "/added-later",
    ]
    # The same routes answer as before: a wrong method on a program's path, an operation route.
    assert client.get("/programs/qa").status_code == 405
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/added-later").json() == {"ok": "yes"}
    assert [str(getattr(route, "path", "")) for route in app.routes] == paths


def test_openapi_has_generated_models(make_client: AppFactory) -> None:
    client, _ = make_client()
    doc = client.get("/openapi.json").json()
    schemas = doc["components"]["schemas"]
    request = schemas["QaRequest"]
    assert request["required"] == ["question"]
    assert request["properties"]["question"]["maxLength"] == 20_000
    assert "QaResponse" in schemas
    assert "/programs/qa/stream" in doc["paths"]
    assert client.get("/docs").status_code == 200


def test_health_ready_and_programs(make_client: AppFactory) -> None:
    client, _ = make_client()
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready").json()
    assert ready["status"] == "ready" and ready["programs"]["qa"]["version"] == "base"
    listed = client.get("/programs").json()
    assert listed[0]["path"] == "/programs/qa" and listed[0]["inputs"] == ["question"]


def test_invalid_and_oversized_inputs_never_reach_the_lm(make_client: AppFactory) -> None:
    lm = ScriptedLM([])  # any LM call would raise ScriptExhaustedError
    client, _ = make_client(
        lm=lm, serve={"max_field_chars": 100, "max_body_bytes": 2048, "max_json_depth": 8}
    )
    cases = [
        ({"question": "x" * 101}, 422),
        ({}, 422),
        ({"question": "hi", "extra": 1}, 422),
        ({"question": "y" * 5000}, 413),
        ({"question": "hi", "options": {"temperature": 9}}, 422),
    ]
    for payload, status in cases:
        response = client.post("/programs/qa", json=payload)
        assert response.status_code == status, payload
        assert response.json()["error"]["code"] in ("invalid_input", "payload_too_large")
        assert "y" * 100 not in response.text  # the input is never echoed back
    deep = b'{"question": "q", "options": ' + b"[" * 50 + b"]" * 50 + b"}"
    response = client.post("/programs/qa", content=deep, headers={"Content-Type": "application/json"})
    assert response.status_code == 422 and "nested deeper" in response.json()["error"]["message"]
    assert lm.calls == []


def test_api_keys_required_and_checked(make_client: AppFactory) -> None:
    client, _ = make_client(serve={"api_keys": (SecretStr(KEY),)})
    assert client.post("/programs/qa", json={"question": "q"}).json()["error"]["code"] == "unauthorized"
    wrong = client.post(
        "/programs/qa", json={"question": "q"}, headers={"Authorization": "Bearer " + "z" * 24}
    )
    assert wrong.status_code == 401
    ok = client.post("/programs/qa", json={"question": "q"}, headers={"Authorization": f"Bearer {KEY}"})
    assert ok.status_code == 200
    assert client.post("/programs/qa", json={"question": "q"}, headers={"X-API-Key": KEY}).status_code == 200
    assert client.get("/health").status_code == 200  # probes need no key


def test_no_keys_refused_on_public_address(make_client: AppFactory) -> None:
    with pytest.raises(ConfigError, match="without API keys"):
        make_client(host="0.0.0.0")
    make_client(host="0.0.0.0", serve={"allow_unauthenticated": True})


def test_rate_limit_answers_429_with_retry_after(make_client: AppFactory) -> None:
    client, _ = make_client(serve={"rate_limit_per_minute": 2})
    statuses = [client.post("/programs/qa", json={"question": "q"}).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]
    limited = client.post("/programs/qa", json={"question": "q"})
    assert limited.json()["error"]["code"] == "rate_limited" and int(limited.headers["Retry-After"]) >= 1


def test_token_budget_is_charged_after_each_request(make_client: AppFactory) -> None:
    client, _ = make_client(serve={"token_budget_per_hour": 50})
    first = client.post("/programs/qa", json={"question": "q"})
    assert first.status_code == 200 and first.json()["usage"]["total_tokens"] > 50
    second = client.post("/programs/qa", json={"question": "q"})
    assert second.status_code == 429 and "token budget" in second.json()["error"]["message"]


class _Slow(dspy.Module):
    """Answers after a long think."""

    def __init__(self) -> None:
        super().__init__()
        self.predict = dspy.Predict("question -> answer")

    async def aforward(self, question: str) -> dspy.Prediction:
        await asyncio.sleep(5)
        return await self.predict.acall(question=question)

    def forward(self, question: str) -> dspy.Prediction:
        raise AssertionError("the server must use the async path")


def test_deadline_answers_504_and_marks_the_span(
    make_client: AppFactory, tracing: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    client, _ = make_client([HostedProgram(_SlowToAnswer(), name="slow")], serve={"request_timeout_s": 0.2})
    started = time.perf_counter()
    response = client.post("/programs/slow", json={"question": "q"})
    assert time.perf_counter() - started < 3
    assert response.status_code == 504
    error = response.json()["error"]
    assert error["code"] == "deadline_exceeded" and "0.2 s" in error["message"]
    root, _ = _root(tracing[1], error["trace_id"])
    assert root.attributes[GeodeAttributes.SERVE_ERROR_CODE] == "deadline_exceeded"
    assert root.status.status_code.name == "ERROR"


def test_unparseable_lm_output_is_a_clear_502_without_raw_text(make_client: AppFactory) -> None:
    class Garbage(ScriptedLM):
        pass

    lm = Garbage(lambda m: {"unrelated": "SECRET-RAW-LM-TEXT " * 10})
    client, _ = make_client(lm=lm)
    response = client.post("/programs/qa", json={"question": "q"})
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "lm_output_unparseable"
    assert "SECRET-RAW-LM-TEXT" not in response.text and "Traceback" not in response.text


def test_unexpected_errors_are_opaque(make_client: AppFactory) -> None:
    class Broken(dspy.Module):
        def forward(self, question: str) -> dspy.Prediction:
            raise RuntimeError("db password=hunter2 at /srv/app.py")

        geode_signature = "question -> answer"

    client, _ = make_client([HostedProgram(Broken(), name="broken")])
    response = client.post("/programs/broken", json={"question": "q"})
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "internal_error"
    assert "hunter2" not in response.text and "/srv" not in response.text


class Chat(dspy.Signature):
    """Chat, remembering the conversation."""

    question: str = dspy.InputField()
    history: dspy.History = dspy.InputField()
    answer: str = dspy.OutputField()


def test_sessions_carry_history_between_turns(make_client: AppFactory) -> None:
    seen: list[str] = []

    def answer(messages: list[dict[str, str]]) -> dict[str, Any]:
        seen.append(" ".join(m["content"] for m in messages))
        return {"answer": f"turn {len(seen)}"}

    client, _ = make_client([HostedProgram(dspy.Predict(Chat), name="chat")], lm=ScriptedLM(answer))
    schema = client.get("/openapi.json").json()["components"]["schemas"]["ChatRequest"]
    assert "history" not in schema["properties"]
    first = client.post("/programs/chat", json={"question": "my name is Ada", "session_id": "s-1"}).json()
    client.post("/programs/chat", json={"question": "who am I?", "session_id": "s-1"})
    client.post("/programs/chat", json={"question": "who am I?", "session_id": "s-2"})
    assert "my name is Ada" in seen[1] and "turn 1" in seen[1]
    assert "my name is Ada" not in seen[2]
    turns = client.get("/sessions/s-1").json()["turns"]
    assert [t["outputs"]["answer"] for t in turns] == ["turn 1", "turn 2"]
    # Each turn names the version its response named.
    assert first["version"] == "base" and [t["version"] for t in turns] == ["base", "base"]
    assert client.delete("/sessions/s-1").status_code == 204
    assert client.get("/sessions/s-1").json()["turns"] == []


def test_stream_sends_prediction_event_with_trace_id(make_client: AppFactory) -> None:
    client, _ = make_client()
    with client.stream("POST", "/programs/qa/stream", json={"question": "streamed?"}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        text = "".join(response.iter_text())
    events = [block for block in text.split("\n\n") if block]
    names = [e.split("\n")[0].removeprefix("event: ") for e in events]
    assert names[-2:] == ["prediction", "done"]
    prediction = json.loads(events[-2].split("data: ", 1)[1])
    assert prediction["outputs"] == {"answer": "echo: streamed?"}
    assert prediction["trace_id"] == response.headers["X-Trace-Id"]


def test_stream_errors_arrive_as_an_error_event(make_client: AppFactory) -> None:
    client, _ = make_client([HostedProgram(_SlowToAnswer(), name="slow")], serve={"request_timeout_s": 0.2})
    with client.stream("POST", "/programs/slow/stream", json={"question": "q"}) as response:
        text = "".join(response.iter_text())
    assert "event: error" in text and "deadline_exceeded" in text


def _versioned(answer: str) -> dspy.Predict:
    signature = ensure_signature("question -> answer", f"Variant {answer}.")
    assert signature is not None
    return dspy.Predict(signature)


def test_canary_share_routes_by_session_and_stamps_versions(
    make_client: AppFactory, tracing: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    def answer(messages: list[dict[str, str]]) -> dict[str, Any]:
        return {"answer": "B" if "Variant B" in messages[0]["content"] else "A"}

    candidate = Candidate(_versioned("B"), "v-b", mode="canary", share=0.5)
    client, _ = make_client(
        [HostedProgram(_versioned("A"), name="qa", candidate=candidate)], lm=ScriptedLM(answer)
    )
    seen: dict[str, str] = {}
    for n in range(40):
        body = client.post("/programs/qa", json={"question": "q", "session_id": f"s{n}"}).json()
        assert (body["version"] == "v-b") == (body["outputs"]["answer"] == "B")
        seen[body["trace_id"]] = body["version"]
        again = client.post("/programs/qa", json={"question": "q", "session_id": f"s{n}"}).json()
        assert again["version"] == body["version"]  # a session stays on its version
    assert 5 < sum(v == "v-b" for v in seen.values()) < 35
    for trace_id, version in seen.items():
        _, spans = _root(tracing[1], trace_id)
        stamped = {s.attributes.get(GeodeAttributes.PROGRAM_VERSION) for s in spans}
        assert stamped == ({"v-b"} if version == "v-b" else {None})
    pinned = client.post("/programs/qa", json={"question": "q", "version": "v-b"}).json()
    assert pinned["outputs"]["answer"] == "B"
    unknown = client.post("/programs/qa", json={"question": "q", "version": "nope"})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "version_error"


def test_shadow_runs_candidate_on_a_copy_and_only_traces_it(
    make_client: AppFactory, tracing: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    def answer(messages: list[dict[str, str]]) -> dict[str, Any]:
        return {"answer": "B" if "Variant B" in messages[0]["content"] else "A"}

    candidate = Candidate(_versioned("B"), "v-b", mode="shadow", share=1.0)
    client, app = make_client(
        [HostedProgram(_versioned("A"), name="qa", candidate=candidate)], lm=ScriptedLM(answer)
    )
    bodies = [client.post("/programs/qa", json={"question": f"q{n}"}).json() for n in range(5)]
    assert all(b["outputs"]["answer"] == "A" and b["version"] == "base" for b in bodies)
    deadline = time.monotonic() + 5
    shadows: list[Any] = []
    while time.monotonic() < deadline:
        shadows = [
            s
            for s in tracing[1].get_finished_spans()
            if s.parent is None and (s.attributes or {}).get(GeodeAttributes.SERVE_ROLE) == "shadow"
        ]
        if len(shadows) == 5:
            break
        time.sleep(0.05)
    assert len(shadows) == 5
    assert all(s.attributes[GeodeAttributes.PROGRAM_VERSION] == "v-b" for s in shadows)
    assert all(json.loads(s.attributes[SpanAttributes.OUTPUT_VALUE]) == {"answer": "B"} for s in shadows)
    primary_ids = {b["trace_id"] for b in bodies}
    assert {format(s.links[0].context.trace_id, "032x") for s in shadows} == primary_ids
    metrics = app.state.geode.metrics
    assert metrics.value("geode_shadow_runs_total", {"program": "qa", "outcome": "ok"}) == 5


def test_feedback_is_stored_locally_and_reported(make_client: AppFactory, tmp_path: Any) -> None:
    client, _ = make_client()
    trace_id = client.post("/programs/qa", json={"question": "q"}).json()["trace_id"]
    response = client.post("/feedback", json={"trace_id": trace_id, "score": 1, "label": "good"})
    assert response.status_code == 202 and response.json()["delivered"] == ["local"]
    record = json.loads((tmp_path / "feedback.jsonl").read_text().splitlines()[0])
    assert record["trace_id"] == trace_id and record["program"] == "qa" and record["span_id"]
    bad = client.post("/feedback", json={"trace_id": "not-a-trace", "score": 1})
    assert bad.status_code == 422
    # A bad feedback body is told what the feedback schema is, not about the program's inputs.
    message = bad.json()["error"]["message"]
    assert "feedback schema" in message and "trace_id (32 hex digits)" in message
    assert "program" not in message
    empty = client.post("/feedback", json={"trace_id": trace_id})
    assert empty.status_code == 422 and "needs a score, a label or an explanation" in empty.text


def test_feedback_goes_through_the_durable_outbox_by_default(
    tracing: tuple[TracerProvider, InMemorySpanExporter], tmp_path: Any
) -> None:
    # No feedback sinks given: feedback takes the runtime's outbox, as rt.feedback does. With no
    # Phoenix to take it, it is kept in the outbox (re-sent later) and the answer says it is pending.
    home = tmp_path / "home"
    settings = Settings(
        home=home,
        tracing=TracingSettings(enabled=False),
        phoenix=PhoenixSettings(port=find_free_port()),  # never a Phoenix that happens to be running
    )
    rt = Runtime(settings, lm=echo_lm(), tracer_provider=tracing[0])
    app = create_app(rt, [HostedProgram(dspy.Predict("question -> answer"), name="qa")])
    with TestClient(app) as client:
        trace_id = client.post("/programs/qa", json={"question": "q"}).json()["trace_id"]
        body = client.post("/feedback", json={"trace_id": trace_id, "score": 1}).json()
    rt.close()
    assert body["delivered"] == ["local"] and body["pending"] == ["phoenix"], body
    assert any("no Phoenix is running" in p for p in body["problems"]), body
    ((_, data),) = rt.feedback_outbox.queue.claim(lease_s=1.0)
    kept = FeedbackRecord(**data)
    assert kept.trace_id == trace_id and kept.program == "qa" and kept.span_id
    log = [json.loads(line) for line in (home / "feedback" / "feedback.jsonl").read_text().splitlines()]
    assert [r["trace_id"] for r in log] == [trace_id]


class _DownSink:
    name = "phoenix"

    def send(self, record: Any) -> None:
        raise ConnectionRefusedError("phoenix is down")


def test_feedback_with_phoenix_down_still_succeeds_locally(make_client: AppFactory, tmp_path: Any) -> None:
    from geode.runtime.serving import FeedbackLog

    client, _ = make_client(feedback_sinks=[FeedbackLog(tmp_path / "fb.jsonl"), _DownSink()])
    trace_id = client.post("/programs/qa", json={"question": "q"}).json()["trace_id"]
    body = client.post("/feedback", json={"trace_id": trace_id, "score": 0.5}).json()
    assert body["delivered"] == ["local"] and body["problems"] == ["phoenix: ConnectionRefusedError"]


def test_metrics_count_requests_errors_and_tokens(make_client: AppFactory) -> None:
    client, _ = make_client(serve={"max_field_chars": 50})
    client.post("/programs/qa", json={"question": "q"})
    text = client.get("/metrics").text
    assert 'geode_requests_total{program="qa",status="200",version="base"} 1.0' in text
    assert 'geode_lm_tokens_total{kind="prompt",program="qa",version="base"}' in text
    assert "geode_request_duration_seconds_bucket" in text


def test_per_request_options_apply_to_that_request_only(make_client: AppFactory) -> None:
    lm = ScriptedLM(lambda m: {"answer": "x"})
    client, _ = make_client(lm=lm)
    client.post("/programs/qa", json={"question": "q", "options": {"temperature": 0.7}})
    client.post("/programs/qa", json={"question": "q"})
    temperatures = [call.lm_kwargs.get("temperature") for call in lm.calls]
    assert temperatures[0] == 0.7 and temperatures[1] != 0.7


def test_lm_history_stays_empty_while_serving(make_client: AppFactory) -> None:
    from dspy.clients.base_lm import GLOBAL_HISTORY

    from .conftest import echo_lm

    lm = echo_lm()
    client, _ = make_client(lm=lm)
    before = len(GLOBAL_HISTORY)
    for n in range(5):
        assert client.post("/programs/qa", json={"question": f"q{n}"}).status_code == 200
    assert lm.history == [] and len(GLOBAL_HISTORY) == before
    # The same LM outside the server keeps history: the check above can fail.
    with dspy.context(lm=lm):
        dspy.Predict("question -> answer")(question="direct")
    assert len(lm.history) == 1


def test_serve_prints_every_route_and_the_docs_page(make_client: AppFactory) -> None:
    from geode.cli.serve import routes_banner

    _, app = make_client()
    lines = routes_banner(app, "http://127.0.0.1:8000")
    assert lines[0] == "serving on http://127.0.0.1:8000"
    assert "  POST  http://127.0.0.1:8000/programs/qa" in lines
    assert "  POST  http://127.0.0.1:8000/programs/qa/stream" in lines
    assert lines[-1] == "  API docs (try it in a browser): http://127.0.0.1:8000/docs"


class _SlowToAnswer(dspy.Module):
    """Answers after a while, so a streaming client can leave first."""

    geode_signature = "question -> answer"

    def forward(self, question: str) -> dspy.Prediction:
        time.sleep(2.0)
        return dspy.Prediction(answer="late")

    async def aforward(self, question: str) -> dspy.Prediction:
        await asyncio.sleep(2.0)
        return dspy.Prediction(answer="late")


def test_a_stream_client_that_leaves_is_not_a_server_error(make_client: AppFactory) -> None:
    _, app = make_client([HostedProgram(_SlowToAnswer(), name="slow")])
    body = json.dumps({"question": "q"}).encode()
    requests = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[dict[str, Any]] = []

    async def scenario() -> None:
        started = asyncio.Event()

        async def receive() -> MutableMapping[str, Any]:
            if requests:
                return requests.pop(0)
            await started.wait()
            await asyncio.sleep(0.2)
            return {"type": "http.disconnect"}  # the client closes the stream mid-run

        async def send(message: MutableMapping[str, Any]) -> None:
            sent.append(dict(message))
            if message["type"] == "http.response.start":
                started.set()

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/programs/slow/stream",
            "raw_path": b"/programs/slow/stream",
            "query_string": b"",
            "root_path": "",
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8000),
        }
        await asyncio.wait_for(app(scope, receive, send), timeout=10)

    asyncio.run(scenario())
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 200
    metrics = app.state.geode.metrics
    labels = {"program": "slow", "version": "base"}
    assert metrics.value("geode_requests_total", {**labels, "status": "499"}) == 1
    assert metrics.value("geode_requests_total", {**labels, "status": "500"}) == 0
    assert metrics.value("geode_request_errors_total", {**labels, "code": "internal_error"}) == 0
