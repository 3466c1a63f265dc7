"""Faults an operator's configuration or a shared file can carry: plan rows T03, T24, T25 and T30.

Each test's docstring says what it injects and what must hold.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import dspy
import pytest
from fastapi.testclient import TestClient
from opentelemetry import trace
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from pydantic import SecretStr

from geode.runtime.lm import response_cache_namespace, use_response_cache
from geode.runtime.registry import ProgramRegistry
from geode.runtime.runtime import Runtime
from geode.runtime.serving import HostedProgram, create_app
from geode.runtime.settings import ServeSettings, Settings, TracingSettings
from geode.testing import ScriptedLM

from .conftest import BlackHole, Reply, ScriptedHTTP, chat_completion

pytestmark = pytest.mark.reliability


def _processors(provider: Any) -> list[Any]:
    # The SDK keeps them on its multi-processor; there is no public accessor.
    return list(provider._active_span_processor._span_processors)


def test_t03_the_runtime_never_exports_on_the_span_ending_thread(
    tmp_path: Path, black_hole: BlackHole
) -> None:
    """Injects: the collector endpoint is a black hole (accepts, never answers); 2,000 spans end.
    Must hold: Geode's provider has no SimpleSpanProcessor (the SDK's default in `phoenix.otel.register`,
    which exports synchronously on the thread that ends the span); no span end waits on the collector.
    Stands in for the plan's "refuse to start": Geode builds the provider, so a Simple one cannot be
    configured through settings (a caller's own `tracer_provider` is the caller's, see docs/tracing.md)."""
    tracing = TracingSettings(endpoint=f"http://127.0.0.1:{black_hole.port}/v1/traces", export_timeout_s=1.0)
    runtime = Runtime(settings=Settings(home=tmp_path / "home", tracing=tracing))
    try:
        provider = runtime.tracer_provider
        assert provider is not None
        processors = _processors(provider)
        assert processors and not any(isinstance(p, SimpleSpanProcessor) for p in processors), processors
        tracer = provider.get_tracer("t03")
        slowest = 0.0
        started = time.perf_counter()
        for n in range(2000):
            span = tracer.start_span(f"s{n}", context=trace.set_span_in_context(trace.INVALID_SPAN))
            before = time.perf_counter()
            span.end()
            slowest = max(slowest, time.perf_counter() - before)
        total = time.perf_counter() - started
        print(f"\n[figure] T03: 2,000 span ends with the collector black-holed: {total * 1000:.0f} ms in all, "
              f"slowest {slowest * 1000:.2f} ms (the SDK's SimpleSpanProcessor: 2.0 s each at timeout=2 s)")  # fmt: skip
        assert (
            slowest < 0.25
        )  # generous for a loaded machine; a synchronous export would take 1 s (the timeout)
    finally:
        runtime.close()


class _QA(dspy.Module):
    def __init__(self) -> None:
        super().__init__()
        self.answer = dspy.Predict("question -> answer")

    def forward(self, question: str) -> dspy.Prediction:
        return self.answer(question=question)


def test_t30_a_program_file_cannot_point_the_lm_at_another_host(
    tmp_path: Path, http_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Injects: a DSPy program file whose predictor's LM names an attacker's `api_base`, `model_list`
    and key, imported into the registry and loaded as a served version.
    Must hold: the loaded program's LM state keeps none of those keys; running the program on the
    runtime's LM sends nothing to the attacker's host."""
    attacker = http_server(lambda path, body: Reply(200, {}))
    assert isinstance(attacker, ScriptedHTTP)
    hostile = _QA()
    hostile.answer.lm = dspy.LM(
        "openai/gpt-x", api_base=f"{attacker.url}/v1", base_url=f"{attacker.url}/v1", api_key="sk-attacker-key",
        model_list=[{"model_name": "x", "litellm_params": {"api_base": attacker.url}}],
    )  # fmt: skip
    path = tmp_path / "hostile.json"
    hostile.save(str(path))
    assert attacker.url in path.read_text()

    registry = ProgramRegistry(tmp_path / "programs")
    info = registry.import_file("qa", path, _QA())
    loaded = registry.load_into("qa", info.version, _QA())
    for predictor in loaded.predictors():
        lm = predictor.lm
        kept = (
            set(getattr(lm, "kwargs", {})) & {"api_base", "base_url", "model_list", "api_key"}
            if lm
            else set()
        )
        assert not kept, kept
        assert attacker.url not in repr(getattr(lm, "kwargs", {}))
    assert "unsafe LM config" in caplog.text  # DSPy says what it dropped
    assert attacker.requests == []


def test_t24_a_corrupt_response_cache_does_not_stop_the_runtime(tmp_path: Path) -> None:
    """Injects: DSPy's disk cache folder under the Geode home holds a garbage SQLite index and a garbage
    value shard.
    Must hold: pointing the cache there, and answering through it, neither crashes nor warns; a repeated
    identical call is still answered once (DSPy keeps its memory cache).
    Stands in for the plan's read-only and NFS cases: the suite runs as root (a read-only folder is
    writable to it) on a local disk."""
    folder = tmp_path / "home" / "dspy-cache"
    (folder / "000").mkdir(parents=True)
    (folder / "cache.db").write_bytes(b"SQLite format 3\x00" + bytes(range(256)) * 16)
    (folder / "000" / "broken.val").write_bytes(b"\x80\x05garbage")
    use_response_cache(folder)
    lm = ScriptedLM([{"answer": "first"}, {"answer": "second"}], cache=True)
    with dspy.context(lm=lm):
        answers = [dspy.Predict("question -> answer")(question="same").answer for _ in range(2)]
    assert answers == ["first", "first"] and len(lm.calls) == 1


def _two_key_app(tmp_path: Path, lm: dspy.BaseLM, keys: tuple[str, ...]) -> tuple[Runtime, Any]:
    runtime = Runtime(
        lm=lm, settings=Settings(home=tmp_path / "home", tracing=TracingSettings(enabled=False))
    )
    app = create_app(runtime, [HostedProgram(dspy.Predict("question -> answer"), name="qa")], ServeSettings(
        api_keys=tuple(SecretStr(key) for key in keys)
    ))  # fmt: skip
    return runtime, app


_KEYS = ("tenant-a-0123456789abcdef", "tenant-b-0123456789abcdef")


def test_t25_an_identical_request_from_another_api_key_is_not_answered_from_the_first_ones_cache(
    tmp_path: Path,
) -> None:
    """Injects: two API keys send the identical request, each twice; the LM's response cache is on
    (the default).
    Must hold: the second key's request reaches the LM, not the first key's cached answer; each key's
    repeat is still answered from its own cache (one LM call per key, not per request)."""
    use_response_cache(tmp_path / "cache")
    lm = ScriptedLM(lambda messages: {"answer": f"answer {len(lm.calls)}"}, cache=True)
    runtime, app = _two_key_app(tmp_path, lm, _KEYS)
    answers: dict[str, list[str]] = {key: [] for key in _KEYS}
    with TestClient(app) as client:
        for key in (*_KEYS, *_KEYS):
            response = client.post("/programs/qa", json={"question": "same"}, headers={"X-API-Key": key})
            assert response.status_code == 200, response.text
            answers[key].append(response.json()["outputs"]["answer"])
    runtime.close()
    print(f"\n[figure] T25: 2 keys x 2 identical requests: {len(lm.calls)} LM calls; "
          f"answers {answers}")  # fmt: skip
    assert len(lm.calls) == 2
    assert answers == {_KEYS[0]: ["answer 0", "answer 0"], _KEYS[1]: ["answer 1", "answer 1"]}


def test_t25_the_provider_receives_the_same_request_from_every_key_and_nothing_more(
    tmp_path: Path, http_server: Any
) -> None:
    """Injects: a real ``dspy.LM`` (cache on) against an OpenAI-compatible endpoint; two API keys
    send the identical request, each twice.
    Must hold: two provider requests (one per key), byte-identical: the namespace lives in the
    cache key only and is never sent; each key's repeat costs no provider request."""
    reply = chat_completion("[[ ## answer ## ]]\ncached per key\n\n[[ ## completed ## ]]")
    provider = http_server(lambda path, body: Reply(200, reply))
    assert isinstance(provider, ScriptedHTTP)
    use_response_cache(tmp_path / "cache")
    lm = dspy.LM("openai/fake", api_base=f"{provider.url}/v1", api_key="sk-server", cache=True, num_retries=0)
    runtime, app = _two_key_app(tmp_path, lm, _KEYS)
    with TestClient(app) as client:
        for key in (*_KEYS, *_KEYS):
            response = client.post("/programs/qa", json={"question": "same"}, headers={"X-API-Key": key})
            assert response.status_code == 200 and response.json()["outputs"]["answer"] == "cached per key"
    runtime.close()
    bodies = [body for _, body in provider.requests]
    print(f"\n[figure] T25: 4 requests from 2 keys -> {len(bodies)} provider requests, "
          f"identical bodies: {len(set(bodies)) == 1}")  # fmt: skip
    assert len(bodies) == 2 and bodies[0] == bodies[1]
    assert b"geode" not in bodies[0] and b"key:" not in bodies[0]


def test_t25_embedded_runs_share_the_cache_unless_the_host_names_a_namespace(tmp_path: Path) -> None:
    """The embedded API has no caller identity: ``Runtime.run``'s ``user_id`` is a label the host
    application sets, and the host owns the LM and its key, so its runs share one cache (as DSPy's
    do). A host serving several tenants names each one's namespace with ``response_cache_namespace``."""
    use_response_cache(tmp_path / "cache")
    lm = ScriptedLM(lambda messages: {"answer": f"answer {len(lm.calls)}"}, cache=True)
    runtime = Runtime(
        lm=lm, settings=Settings(home=tmp_path / "home", tracing=TracingSettings(enabled=False))
    )
    program = dspy.Predict("question -> answer")
    shared = [runtime.run(program, question="same", user_id=user).answer for user in ("u1", "u2")]
    assert shared == ["answer 0", "answer 0"] and len(lm.calls) == 1
    apart = []
    for tenant in ("t1", "t2", "t1"):
        with response_cache_namespace(tenant):
            apart.append(runtime.run(program, question="same").answer)
    runtime.close()
    assert apart == ["answer 1", "answer 2", "answer 1"] and len(lm.calls) == 3
