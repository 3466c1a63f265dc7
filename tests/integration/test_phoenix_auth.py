"""A real Phoenix with authentication enabled: spans, feedback and trace reads carry the API key.

Starts its own ``phoenix serve`` (PHOENIX_ENABLE_AUTH, with PHOENIX_ADMIN_SECRET as the API key the
runtime sends); without the key, Phoenix refuses all three. About a minute, most of it Phoenix's start.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import dspy
import pytest
from pydantic import SecretStr

from geode.errors import TraceSourceError
from geode.runtime.feedback import FeedbackOutbox, make_feedback_record
from geode.runtime.phoenix import PhoenixServer, find_free_port
from geode.runtime.runtime import Runtime, trace_id_of
from geode.runtime.settings import PhoenixSettings, Settings, TracingSettings
from geode.testing import ScriptedLM
from geode.traces.sources import PhoenixTraceSource

pytestmark = pytest.mark.phoenix

# Phoenix's rules: at least 32 characters, a digit and a lower-case letter; the two must differ.
_SECRET = "jwt-signing-secret-0123456789-abcdefgh"
_ADMIN = "admin-bearer-secret-9876543210-zyxwvuts"
_PROJECT = "auth-test"


@pytest.fixture(scope="module")
def auth_phoenix(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    env = {"PHOENIX_ENABLE_AUTH": "true", "PHOENIX_SECRET": _SECRET, "PHOENIX_ADMIN_SECRET": _ADMIN}
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)  # the launcher hands its environment to `phoenix serve`
    settings = PhoenixSettings(port=find_free_port(), grpc_port=find_free_port(), start_timeout_s=600.0)
    server = PhoenixServer(settings, working_dir=tmp_path_factory.mktemp("auth-phoenix"))
    try:
        status = server.start()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    assert status.running, status
    yield status.url
    server.stop()


def _settings(home: Path, url: str, key: str | None) -> Settings:
    return Settings(
        home=home,
        tracing=TracingSettings(endpoint=url, project=_PROJECT),
        phoenix=PhoenixSettings(api_key=SecretStr(key) if key else None),
    )


def _traced_run(settings: Settings) -> str:
    with Runtime(settings, lm=ScriptedLM([{"answer": "4"}])) as rt:
        trace_id = trace_id_of(rt.run(dspy.Predict("question -> answer"), question="2 + 2?"))
    assert trace_id is not None
    return trace_id


def _trace_ids(url: str, wait_s: float) -> set[str]:
    deadline = time.monotonic() + wait_s
    found: set[str] = set()
    with PhoenixTraceSource(url, _PROJECT, api_key=_ADMIN) as source:
        while time.monotonic() < deadline:
            try:
                found = {t.trace_id for t in source.traces()}
            except TraceSourceError:
                found = set()  # the project appears with its first span
            if found:
                return found
            time.sleep(0.5)
    return found


def test_spans_feedback_and_reads_carry_the_api_key(auth_phoenix: str, tmp_path: Path) -> None:
    # Without the key every span is refused: nothing arrives (the app itself is unaffected).
    keyless = _traced_run(_settings(tmp_path / "keyless", auth_phoenix, None))
    keyed_settings = _settings(tmp_path / "keyed", auth_phoenix, _ADMIN)
    keyed = _traced_run(keyed_settings)
    arrived = _trace_ids(auth_phoenix, wait_s=30)
    assert keyed in arrived and keyless not in arrived

    with pytest.raises(TraceSourceError), PhoenixTraceSource(auth_phoenix, _PROJECT) as anonymous:
        list(anonymous.traces())

    outbox = FeedbackOutbox.for_settings(keyed_settings, timeout_s=10.0)
    try:
        receipt = outbox.submit(make_feedback_record(keyed, score=1.0, label="good"), timeout_s=60.0)
        assert receipt.delivered, outbox.last_error
    finally:
        outbox.close()


def test_the_start_up_key_check_tells_a_refused_key_from_an_accepted_one(
    auth_phoenix: str, tmp_path: Path
) -> None:
    """T07 against a real Phoenix with auth: what `geode serve` logs at start-up (see keycheck)."""
    from geode.runtime.tracing.keycheck import check_phoenix_key

    assert check_phoenix_key(_settings(tmp_path, auth_phoenix, _ADMIN)) is None
    wrong = check_phoenix_key(_settings(tmp_path, auth_phoenix, "not-the-key"))
    assert wrong is not None and "refused PHOENIX_API_KEY" in wrong
    missing = check_phoenix_key(_settings(tmp_path, auth_phoenix, None))
    assert missing is not None and "none is set" in missing
