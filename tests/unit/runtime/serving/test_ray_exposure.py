"""The Ray Serve deployment refuses to serve without API keys (Ray's proxy is a public address).

Only Ray's import is needed: the replica class is built directly, without a Ray cluster.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from tests.tiers import require_tier

from geode.errors import ConfigError

pytestmark = pytest.mark.ray
require_tier("ray", import_name="ray.serve")

RAY_DIR = Path(__file__).resolve().parents[4] / "deploy" / "ray"


def _replica(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, **serve: Any) -> Any:
    monkeypatch.syspath_prepend(str(RAY_DIR))
    import geode_ray  # pyright: ignore[reportMissingImports]

    settings = {"home": str(tmp_path), "lm": {"model": "openai/unused"}, "tracing": {"enabled": False}}
    # The class under Ray's ingress wrapper (whose __init__ is async and needs a running replica).
    wrapped = geode_ray.GeodeDeployment.func_or_class
    replica_cls = next(c for c in wrapped.__mro__ if "__serve_build_asgi_app__" in vars(c))
    return replica_cls(["geode.examples.qa:program"], {**settings, "serve": serve})


def test_a_replica_without_keys_refuses_to_serve(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    replica = _replica(monkeypatch, tmp_path)
    try:
        with pytest.raises(ConfigError, match="without API keys"):
            replica.__serve_build_asgi_app__()
    finally:
        replica.runtime.close()


@pytest.mark.parametrize(
    "serve", [{"api_keys": ["k" * 24]}, {"allow_unauthenticated": True}], ids=["keys", "opted-out"]
)
def test_a_replica_with_keys_or_an_explicit_opt_out_serves(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, serve: dict[str, Any]
) -> None:
    replica = _replica(monkeypatch, tmp_path, **serve)
    try:
        assert replica.__serve_build_asgi_app__() is not None
    finally:
        replica.runtime.close()
