"""Shared integration fixtures: one real Phoenix server per test session."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from geode.runtime.phoenix import PhoenixServer, PhoenixStatus, find_free_port
from geode.runtime.settings import PhoenixSettings


@pytest.fixture(scope="session")
def phoenix(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PhoenixStatus]:
    """A real ``phoenix serve`` started by Geode's launcher on free ports, stopped after the session.

    Start-up takes ~45 s on an idle 2-core machine. ``GEODE_TEST_PHOENIX_PORT`` points it at a Phoenix
    already running on that port instead (the launcher reuses it), to iterate faster.
    """
    home = tmp_path_factory.mktemp("geode-home")
    reuse_port = os.environ.get("GEODE_TEST_PHOENIX_PORT")
    settings = PhoenixSettings(
        port=int(reuse_port) if reuse_port else find_free_port(),
        grpc_port=find_free_port(),
        start_timeout_s=600.0,  # busy CI machines start it slowly; the launcher's own default is 180
    )
    server = PhoenixServer(settings, working_dir=home / "phoenix")
    status = server.start()
    assert status.running, status
    yield status
    server.stop()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A real PostgreSQL server for the session (tier `postgres`): its URL; each test uses its own schema."""
    from tests.tiers import require_tier, skip_tier

    require_tier("postgres", import_name="psycopg", reason="psycopg: the `postgres` extra")
    from .postgres_server import running_postgres, server_binaries

    if server_binaries() is None:
        skip_tier(
            "postgres", "no PostgreSQL server binaries: apt-get install postgresql (GEODE_INSTALL_POSTGRES=1)"
        )
    with running_postgres() as url:
        yield url
