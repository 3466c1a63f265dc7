"""Canary and shadow routing in the state database: set at run time, followed by every replica."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dspy
import pytest
from fastapi.testclient import TestClient

from geode.errors import VersionError
from geode.runtime.programs import register_program
from geode.runtime.registry import ProgramRegistry
from geode.runtime.runtime import Runtime
from geode.runtime.serving import Candidate, HostedProgram, create_app
from geode.runtime.settings import Settings, StateSettings, TracingSettings
from geode.runtime.state import Route, SqlState, sqlite_url
from geode.testing import ScriptedLM

POLL_S = 0.2


def _variant(text: str) -> dspy.Predict:
    program = dspy.Predict("question -> answer")
    program.demos = [dspy.Example(question=f"demo {text}", answer=text).with_inputs("question")]
    return program


def _answer(messages: list[dict[str, str]]) -> dict[str, Any]:
    # The demo in the prompt says which version runs: "one", "two" or "three" (none: the base program).
    text = "\n".join(m["content"] for m in messages)
    for name in ("one", "two", "three"):
        if f"demo {name}" in text:
            return {"answer": name}
    return {"answer": "base"}


@pytest.fixture
def program(tmp_path: Path) -> Iterator[tuple[str, ProgramRegistry, dict[str, str]]]:
    name = f"qa-{uuid.uuid4().hex[:8]}"
    register_program(name, dspy.Predict("question -> answer"))
    # Another process on the same Geode home: it changes the route, the server must notice.
    admin = ProgramRegistry(
        tmp_path / "home" / "programs", state=SqlState(sqlite_url(tmp_path / "home" / "state.db"))
    )
    versions = {text: admin.save(name, _variant(text)).version for text in ("one", "two", "three")}
    admin.promote(name, versions["one"], force=True)
    yield name, admin, versions


def _client(tmp_path: Path, hosted: HostedProgram) -> TestClient:
    settings = Settings(
        home=tmp_path / "home",
        tracing=TracingSettings(enabled=False),
        state=StateSettings(poll_s=POLL_S),
    )
    rt = Runtime(settings, lm=ScriptedLM(_answer))
    return TestClient(create_app(rt, [hosted]))


def _until(check: Any, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "the replica did not pick the route up"
        time.sleep(0.05)


def test_a_route_set_elsewhere_is_served_within_poll_s(
    tmp_path: Path, program: tuple[str, ProgramRegistry, dict[str, str]]
) -> None:
    name, admin, versions = program
    with _client(tmp_path, HostedProgram(name, name="qa")) as client:

        def ask(session: str = "s") -> dict[str, Any]:
            return client.post("/programs/qa", json={"question": "q", "session_id": session}).json()

        assert ask()["outputs"]["answer"] == "one"
        admin.set_route(name, canary=versions["two"][:6], canary_share=1.0, reason="test")
        _until(lambda: ask()["version"] == versions["two"])
        assert ask()["outputs"]["answer"] == "two"
        listed = client.get("/programs").json()[0]["candidates"]
        assert listed == [{"version": versions["two"], "mode": "canary", "share": 1.0}]

        # A shadow beside a half canary: sessions split by hash, the shadow only runs on copies.
        admin.set_route(
            name, canary=versions["two"], canary_share=0.5, shadow=versions["three"], shadow_share=1.0
        )
        _until(lambda: len(client.get("/programs").json()[0]["candidates"]) == 2)
        answers = {ask(f"s{n}")["outputs"]["answer"] for n in range(30)}
        assert answers == {"one", "two"}
        pinned = client.post("/programs/qa", json={"question": "q", "version": versions["three"]}).json()
        assert pinned["outputs"]["answer"] == "three"

        admin.set_route(name)  # cleared: the active version answers everything again
        _until(lambda: client.get("/programs").json()[0]["candidates"] == [])
        assert {ask(f"s{n}")["outputs"]["answer"] for n in range(10)} == {"one"}
    kinds = [e["action"] for e in admin.events(name)]
    assert kinds == ["promote", "route", "route", "route"]
    assert admin.events(name)[1]["route"]["canary"] == versions["two"]


def test_a_pinned_flag_overrides_the_database_route(
    tmp_path: Path, program: tuple[str, ProgramRegistry, dict[str, str]]
) -> None:
    name, admin, versions = program
    admin.set_route(name, canary=versions["two"], canary_share=1.0)
    pinned = Candidate(_variant("three"), versions["three"], mode="canary", share=1.0)
    with _client(tmp_path, HostedProgram(name, name="qa", candidate=pinned)) as client:
        body = client.post("/programs/qa", json={"question": "q"}).json()
        assert body["outputs"]["answer"] == "three"
        route_version = client.post("/programs/qa", json={"question": "q", "version": versions["two"]})
        assert route_version.status_code == 404  # this process serves its own split only


def test_routes_are_validated_and_promotion_ends_a_canary(
    program: tuple[str, ProgramRegistry, dict[str, str]],
) -> None:
    name, admin, versions = program
    with pytest.raises(VersionError, match="active version"):
        admin.set_route(name, canary=versions["one"])
    with pytest.raises(VersionError, match="both"):
        admin.set_route(name, canary=versions["two"], shadow=versions["two"])
    with pytest.raises(VersionError, match="between 0 and 1"):
        admin.set_route(name, canary=versions["two"], canary_share=1.5)
    with pytest.raises(VersionError, match="no version"):
        admin.set_route(name, shadow="ffffffffffffffff")
    assert admin.route(name) == Route()  # nothing changed by the refusals
    admin.set_route(name, canary=versions["two"], canary_share=0.2, shadow=versions["three"])
    assert admin.route(name) == Route(versions["two"], 0.2, versions["three"], 1.0)
    event = admin.promote(name, versions["two"], force=True)
    # The canary became the active version: only the shadow is left, in the same transaction.
    assert admin.route(name) == Route(None, 0.0, versions["three"], 1.0)
    assert event.route == {
        "canary": None,
        "canary_share": 0.0,
        "shadow": versions["three"],
        "shadow_share": 1.0,
    }
    assert admin.pointer(name).active == versions["two"]
