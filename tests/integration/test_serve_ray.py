"""The same app on Ray Serve (deploy/ray/geode_ray.py), against a local Ray head on loopback.

Needs the `ray` extra (part of `all`, so `make install` brings it); marked `ray`. CI runs it (about a
minute: Ray's head, two replicas and the HTTP proxy start on loopback). Ray is started from this process
and its processes are stopped by `ray.shutdown`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tests.tiers import require_tier

from .serve_helpers import PROGRAMS, REPO, free_port

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
        "GEODE_TRACING_ENABLED": "false",
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


def test_ray_serve_deployment_answers_like_geode_serve(ray_head: int) -> None:
    import geode_ray  # pyright: ignore[reportMissingImports]

    app = geode_ray.build({"programs": [f"qa={PROGRAMS}:qa"], "num_replicas": 2})
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
