"""deploy/: the compose file, Dockerfile and Ray Serve config hold together (Docker is not run here)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

DEPLOY = Path(__file__).resolve().parents[4] / "deploy"


def _compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def _settings_vars() -> set[str]:
    text = (DEPLOY / "env.example").read_text()
    return set(re.findall(r"^#?\s*((?:GEODE|PHOENIX|QDRANT)_[A-Z0-9_]+)=", text, re.M))


def test_compose_services_have_health_checks_volumes_and_ordered_start() -> None:
    compose = _compose()
    services = compose["services"]
    assert set(services) == {"geode", "phoenix", "postgres", "qdrant"}
    for name, service in services.items():
        assert "test" in service["healthcheck"], name
        assert service.get("restart") == "unless-stopped", name
        if name != "geode":
            assert ":" in service["image"] and not service["image"].endswith(":latest"), name
        for volume in service.get("volumes", []):
            assert volume.split(":")[0] in compose["volumes"], (name, volume)
    assert services["geode"]["depends_on"] == {
        "phoenix": {"condition": "service_healthy"},
        "qdrant": {"condition": "service_healthy"},
        "postgres": {"condition": "service_healthy"},
    }
    # The runtime's shared state is in Phoenix's PostgreSQL (its own schema), with the driver baked in.
    assert services["geode"]["environment"]["GEODE_STATE_URL"].startswith("postgresql://")
    assert "postgres" in services["geode"]["build"]["args"]["EXTRAS"].split(",")
    assert services["phoenix"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert services["phoenix"]["ports"] == ["127.0.0.1:6006:6006"]  # the UI is not published
    assert "postgresql://" in services["phoenix"]["environment"]["PHOENIX_SQL_DATABASE_URL"]


def test_compose_geode_variables_are_real_settings() -> None:
    known = _settings_vars()
    environment = _compose()["services"]["geode"]["environment"]
    geode_vars = {k for k in environment if k.startswith("GEODE_")}
    assert geode_vars and geode_vars <= known, geode_vars - known


def test_dockerfile_runs_unprivileged_with_a_health_check() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^USER geode$", text, re.M)
    assert "HEALTHCHECK" in text and "/health" in text
    assert 'ENTRYPOINT ["geode", "serve"]' in text
    assert "GEODE_SERVE_HOST=0.0.0.0" in text
    for name in re.findall(r"(GEODE_[A-Z0-9_]+)=", text):
        assert name in _settings_vars(), name


def test_ray_config_points_at_the_deployment() -> None:
    config = yaml.safe_load((DEPLOY / "ray" / "serve_config.yaml").read_text())
    app = config["applications"][0]
    module, _, attr = app["import_path"].partition(":")
    source = (DEPLOY / "ray" / f"{module}.py").read_text()
    assert f"def {attr}(" in source
    deployment = app["deployments"][0]
    assert f"class {deployment['name']}" in source
    scaling = deployment["autoscaling_config"]
    assert scaling["min_replicas"] <= scaling["initial_replicas"] <= scaling["max_replicas"]
    for name in app["runtime_env"]["env_vars"]:
        assert name in _settings_vars(), name
    assert app["runtime_env"]["env_vars"]["GEODE_STATE_URL"].startswith("postgresql://")
