"""Geode on Ray Serve: the same FastAPI app as `geode serve`, as a Ray Serve deployment with replicas.

Each replica builds its own :class:`geode.Runtime` from ``GEODE_*`` environment variables (pass them in
the Ray Serve config's ``runtime_env.env_vars``) and serves :func:`geode.runtime.serving.create_app`
through Ray's HTTP proxy: same endpoints, same auth and limits, same spans (exported by each replica).

Run it with the config next to this file::

    serve run deploy/ray/serve_config.yaml

or from Python (``app = build({"programs": ["geode.examples.qa:program"]})``; ``serve.run(app)``).
Replicas refuse to start without ``GEODE_SERVE_API_KEYS`` (Ray's proxy is treated as public), unless
``GEODE_SERVE_ALLOW_UNAUTHENTICATED=true`` says a proxy in front of Ray authenticates callers.
Replicas share sessions, served runs (feedback is accepted by any replica), the feedback outbox and
the active program versions through the state database: ``GEODE_STATE_URL`` (PostgreSQL) for replicas
on several nodes; on one node the default SQLite file in a shared ``GEODE_HOME`` does too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ray import serve
from ray.serve import Application

from geode.runtime.serving import HostedProgram

__all__ = ["PUBLIC_HOST", "GeodeDeployment", "build"]

PUBLIC_HOST = "0.0.0.0"
"""The address the app's exposure check is given: Ray's proxy may serve any interface of any node."""


@serve.deployment(
    # Defaults for `build`; the YAML config overrides them (num_replicas or autoscaling_config).
    ray_actor_options={"num_cpus": 1},
    max_ongoing_requests=64,
    graceful_shutdown_timeout_s=20,
    health_check_period_s=10,
)
@serve.ingress()
class GeodeDeployment:
    """One replica: a Runtime and the Geode app over it."""

    def __init__(self, programs: Sequence[str], settings: dict[str, Any] | None = None) -> None:
        from geode.runtime.runtime import Runtime
        from geode.runtime.settings import Settings

        # Settings come from the replica's environment (runtime_env.env_vars), plus explicit overrides.
        self.runtime = Runtime(Settings(**(settings or {})))
        self.programs = list(programs)

    def __serve_build_asgi_app__(self) -> Any:
        from geode.runtime.serving import HostedProgram, create_app

        programs = [HostedProgram.parse(text) for text in self.programs]
        # Ray's HTTP proxy is the public face (the shipped config binds 0.0.0.0 on every node) and a
        # replica cannot see where it is bound, so the app is told it is public: without API keys it
        # refuses to start, as `geode serve` does on a public address, unless
        # GEODE_SERVE_ALLOW_UNAUTHENTICATED says a proxy in front authenticates.
        return create_app(self.runtime, programs, self.runtime.settings.serve, host=PUBLIC_HOST)

    def check_health(self) -> None:
        """Ray calls this periodically; raising marks the replica unhealthy and replaces it."""
        self.runtime.resolve(HostedProgram.parse(self.programs[0]).program)

    def __del__(self) -> None:
        runtime = getattr(self, "runtime", None)
        if runtime is not None:
            runtime.close()


def build(args: dict[str, Any]) -> Application:
    """The Ray Serve application (``import_path: geode_ray:build`` in a Serve config).

    Args:
        args: ``programs``: programs to host, ``REF`` or ``NAME=REF`` as for ``geode serve`` (required); ``settings``: Geode settings
            overrides as a dict (the rest comes from ``GEODE_*`` variables); ``num_replicas`` or
            ``autoscaling_config``: replica settings when not given in the Serve config.
    """
    programs = args.get("programs")
    if not programs:
        raise ValueError("build() needs args.programs: a list of program references")
    options = {k: args[k] for k in ("num_replicas", "autoscaling_config") if k in args}
    deployment = GeodeDeployment.options(**options) if options else GeodeDeployment
    return deployment.bind(list(programs), args.get("settings"))
