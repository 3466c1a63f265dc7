"""The same app on Ray Serve (deploy/ray/geode_ray.py), against a local Ray head on loopback.

Needs the `ray` extra (part of `all`, so `make install` brings it); marked `ray`. CI runs it (about a
minute: Ray's head, two replicas and the HTTP proxy start on loopback). Ray is started from this process
and its processes are stopped by `ray.shutdown`.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dspy
import httpx
import pytest
from tests.tiers import require_tier

from .serve_helpers import PROGRAMS, REPO, free_port
from .serve_programs import Chat as ScriptedChat

pytestmark = pytest.mark.ray

ray = require_tier("ray", import_name="ray")
serve = require_tier("ray", import_name="ray.serve")
_KEY = "ray-test-key-0123456789"


@pytest.fixture
def ray_head(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    monkeypatch.syspath_prepend(str(REPO / "deploy" / "ray"))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO / "deploy" / "ray"), str(REPO / "src")]))
    # Ray Serve's proxy checks assume an idle machine (5 s to become ready); shared CI machines are not.
    for name, value in {
        "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "120",
        "RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S": "60",
        "RAY_SERVE_PROXY_HEALTH_CHECK_PERIOD_S": "30",
        "RAY_USAGE_STATS_ENABLED": "0",
        "NO_PROXY": "127.0.0.1,localhost",
    }.items():
        monkeypatch.setenv(name, value)
    env = {
        "GEODE_HOME": str(tmp_path / "home"),
        "GEODE_LM_MODEL": "openai/unused",
        # Traced (to a span file, no collector): /feedback names a run by its trace id.
        "GEODE_TRACING_ENABLED": "true",
        "GEODE_TRACING_ENDPOINT": "http://127.0.0.1:9",  # discard port: nothing listens, spans are dropped
        "GEODE_TRACING_OTLP_FILE": str(tmp_path / "spans.jsonl"),
        "GEODE_SERVE_API_KEYS": f'["{_KEY}"]',  # Ray's proxy counts as public: no keys, no replica
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=100 * 2**20,
        _node_ip_address="127.0.0.1",
        runtime_env={"env_vars": env},
        log_to_driver=False,
    )
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        yield port
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.mark.postgres
def test_ray_serve_deployment_answers_like_geode_serve(
    ray_head: int, postgres_url: str, tmp_path: Path
) -> None:
    import geode_ray  # pyright: ignore[reportMissingImports]

    # Both replicas share one state database: the real PostgreSQL of the test session.
    state = {"url": postgres_url, "schema_name": f"ray_{uuid.uuid4().hex[:8]}", "poll_s": 0.5}
    chat = f"{PROGRAMS}:replica_chat"
    app = geode_ray.build(
        {"programs": [f"qa={PROGRAMS}:qa", f"chat={chat}"], "num_replicas": 2, "settings": {"state": state}}
    )
    serve.run(app, name="geode", route_prefix="/", blocking=False)
    base = f"http://127.0.0.1:{ray_head}"
    with httpx.Client(base_url=base, timeout=60) as client:
        assert client.post("/programs/qa", json={"question": "no key"}).status_code == 401
        client.headers["Authorization"] = f"Bearer {_KEY}"
        answers = [client.post("/programs/qa", json={"question": f"ray {n}"}) for n in range(8)]
        assert [r.status_code for r in answers] == [200] * 8, answers[0].text
        assert [r.json()["outputs"]["answer"] for r in answers] == [f"echo: ray {n}" for n in range(8)]
        assert client.get("/ready").json()["status"] == "ready"
        assert "QaRequest" in client.get("/openapi.json").json()["components"]["schemas"]
        invalid = client.post("/programs/qa", json={"question": "x" * 30_000})
        assert invalid.status_code == 422 and invalid.json()["error"]["code"] == "invalid_input"
    status = serve.status().applications["geode"]
    assert status.deployments["GeodeDeployment"].replica_states.get("RUNNING") == 2
    _replicas_share_state(base, chat, state, tmp_path)


def _replicas_share_state(base: str, chat: str, state: dict[str, Any], tmp_path: Path) -> None:
    """One session continued across both replicas; feedback on any run; a promotion seen by both."""
    from geode.runtime.registry import ProgramRegistry
    from geode.runtime.state import SqlState

    headers = {"Authorization": f"Bearer {_KEY}"}
    with httpx.Client(base_url=base, timeout=60, headers=headers) as client:
        pids: list[str] = []
        traces: list[str] = []
        for turn in range(24):  # Ray routes each request to either replica: both answer this session
            reply = client.post("/programs/chat", json={"question": f"t{turn}", "session_id": "ray-s"})
            assert reply.status_code == 200, reply.text
            answer = reply.json()["outputs"]["answer"]
            # Every turn saw all earlier ones (GEODE_SERVE_MAX_SESSION_TURNS=20 keeps the last 20).
            assert answer.startswith(f"turns seen: {min(turn, 20)} by "), (turn, answer)
            pids.append(answer.rsplit(" ", 1)[1])
            traces.append(reply.json()["trace_id"])
            if turn >= 5 and len(set(pids)) == 2:
                break
        assert len(set(pids)) == 2, f"one replica answered every turn: {pids}"
        # Feedback on each run, routed to either replica: every one is accepted, also by the replica
        # that did not serve the run (the run index is shared; a per-replica map would refuse half).
        for trace_id in traces:
            accepted = client.post("/feedback", json={"trace_id": trace_id, "score": 1})
            assert accepted.status_code == 202, accepted.text

        # A promotion made outside the replicas (as `geode promote` would) reaches both within poll_s.
        module = ScriptedChat()
        module.predict.demos = [dspy.Example(question="q", answer="a", history=dspy.History(messages=[]))]
        registry = ProgramRegistry(
            tmp_path / "home" / "programs",  # the replicas' GEODE_HOME (ray_head): version files are shared
            state=SqlState(state["url"], schema_name=state["schema_name"]),
        )
        version = registry.save(chat, module).version
        registry.promote(chat, version, force=True)
        deadline = time.monotonic() + 10.0
        served: dict[str, str] = {}
        while len(served) < 2 or set(served.values()) != {version}:
            assert time.monotonic() < deadline, f"not every replica serves {version}: {served}"
            reply = client.post("/programs/chat", json={"question": "after"})
            served[reply.json()["outputs"]["answer"].rsplit(" ", 1)[1]] = reply.headers["x-geode-version"]
        assert served == {pid: version for pid in set(pids)}, served
