"""The Phoenix launcher's decisions (reuse, port conflicts, stale pid files), without starting Phoenix.

Starting a real ``phoenix serve`` takes ~45 s; tests/integration/test_phoenix.py does that.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from geode.errors import ConfigError
from geode.runtime.phoenix import (
    PhoenixPortInUseError,
    PhoenixServer,
    find_free_port,
    local_phoenix_url,
    probe_port,
)
from geode.runtime.settings import PhoenixSettings, Settings


class _PhoenixLike(BaseHTTPRequestHandler):
    """Answers the two endpoints the launcher probes, like a running Phoenix does."""

    def do_GET(self) -> None:
        body = {"/arize_phoenix_version": b"20.26.1", "/readyz": b"{}", "/healthz": b"OK"}.get(self.path)
        self.send_response(200 if body is not None else 404)
        self.end_headers()
        self.wfile.write(body or b"not found")

    def log_message(self, format: str, *args: object) -> None:
        pass


class _SomeOtherApp(BaseHTTPRequestHandler):
    """Another web app holding the port: no Phoenix endpoints."""

    def do_GET(self) -> None:
        self.send_response(404)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


def _serve(handler: type[BaseHTTPRequestHandler]) -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield int(server.server_address[1])
    server.shutdown()
    server.server_close()


@pytest.fixture
def phoenix_like() -> Iterator[int]:
    yield from _serve(_PhoenixLike)


@pytest.fixture
def busy_port() -> Iterator[int]:
    yield from _serve(_SomeOtherApp)


def _server(tmp_path: Path, port: int) -> PhoenixServer:
    return PhoenixServer(
        PhoenixSettings(port=port, grpc_port=find_free_port()), working_dir=tmp_path / "phoenix"
    )


def test_probe_tells_phoenix_other_and_free(phoenix_like: int, busy_port: int) -> None:
    assert probe_port("127.0.0.1", phoenix_like) == ("phoenix", "20.26.1")
    assert probe_port("127.0.0.1", busy_port) == ("other", None)
    assert probe_port("127.0.0.1", find_free_port()) == ("free", None)


def test_running_phoenix_on_the_port_is_reused(phoenix_like: int, tmp_path: Path) -> None:
    server = _server(tmp_path, phoenix_like)
    status = server.start()
    assert status.reused and status.running and status.version == "20.26.1"
    assert status.url == f"http://127.0.0.1:{phoenix_like}"
    assert status.collector_endpoint == f"http://127.0.0.1:{phoenix_like}/v1/traces"
    assert not status.managed and status.working_dir is None
    assert not server.state_path.exists()  # nothing was started, so nothing to stop later
    assert server.stop() is False


def test_port_held_by_another_program_is_reported(busy_port: int, tmp_path: Path) -> None:
    server = _server(tmp_path, busy_port)
    with pytest.raises(
        PhoenixPortInUseError, match=rf"port {busy_port} .* in use by another program"
    ) as info:
        server.start()
    assert isinstance(info.value, ConfigError)
    assert "--any-port" in str(info.value) and "--port" in str(info.value)
    assert not server.state_path.exists()


def test_stale_pid_file_is_cleared(tmp_path: Path) -> None:
    server = _server(tmp_path, find_free_port())
    finished = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead_pid = int(finished.stdout)
    server.working_dir.mkdir(parents=True)
    server.state_path.write_text(
        json.dumps(
            {
                "pid": dead_pid,
                "host": "127.0.0.1",
                "port": server.settings.port,
                "grpc_port": 4317,
                "url": server.url_for(server.settings.port),
                "working_dir": str(server.working_dir),
                "started_at": 0.0,
            }
        )
    )
    server.pid_path.write_text(f"{dead_pid}\n")
    status = server.status()
    assert not status.running and status.pid is None
    assert not server.state_path.exists() and not server.pid_path.exists()
    assert server.stop() is False


def test_pid_of_an_unrelated_process_is_not_stopped(tmp_path: Path) -> None:
    # A pid file whose pid now belongs to something that is not Phoenix must not be signalled.
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        server = _server(tmp_path, find_free_port())
        server.working_dir.mkdir(parents=True)
        state = {
            "pid": sleeper.pid,
            "host": "127.0.0.1",
            "port": server.settings.port,
            "grpc_port": 4317,
            "url": server.url_for(server.settings.port),
            "working_dir": str(server.working_dir),
            "started_at": 0.0,
        }
        server.state_path.write_text(json.dumps(state))
        assert server.stop() is False
        assert sleeper.poll() is None
    finally:
        sleeper.kill()
        sleeper.wait()


def test_local_phoenix_url_finds_the_recorded_or_configured_server(
    phoenix_like: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    free = find_free_port()
    settings = Settings(home=tmp_path, phoenix=PhoenixSettings(port=free))
    assert local_phoenix_url(settings) is None
    assert local_phoenix_url(Settings(home=tmp_path, phoenix=PhoenixSettings(port=phoenix_like))) == (
        f"http://127.0.0.1:{phoenix_like}"
    )
    # `geode phoenix --any-port` may have started it elsewhere: the state file says where.
    server = PhoenixServer.from_settings(settings)
    server.working_dir.mkdir(parents=True)
    server.state_path.write_text(
        json.dumps(
            {
                "pid": 1,
                "host": "127.0.0.1",
                "port": phoenix_like,
                "grpc_port": 4317,
                "url": f"http://127.0.0.1:{phoenix_like}",
                "working_dir": str(server.working_dir),
                "started_at": 0.0,
            }
        )
    )
    assert local_phoenix_url(settings) == f"http://127.0.0.1:{phoenix_like}"


def test_paths_live_in_the_geode_home(tmp_path: Path) -> None:
    server = PhoenixServer.from_settings(Settings(home=tmp_path))
    assert server.working_dir == tmp_path / "phoenix"
    assert server.log_path == tmp_path / "phoenix" / "phoenix.log"
    assert server.pid_path.name == "phoenix.pid" and server.state_path.name == "phoenix.json"


def test_start_failure_report_leads_with_the_exception(tmp_path: Path) -> None:
    # The shape of a real failed start (bad PHOENIX_SQL_DATABASE_URL): the cause sits far above the
    # advice Phoenix prints last, and an earlier start's output is in the same log.
    server = _server(tmp_path, find_free_port())
    server.working_dir.mkdir(parents=True)
    advice = [f"advice line {i}" for i in range(20)]
    server.log_path.write_text(
        "\n".join(
            [
                "--- geode: starting Phoenix on http://127.0.0.1:1 at yesterday ---",
                "OldError: from an earlier start",
                "--- geode: starting Phoenix on http://127.0.0.1:2 at today ---",
                "Traceback (most recent call last):",
                "sqlean.dbapi2.OperationalError: unable to open database file",
                "phoenix.exceptions.PhoenixMigrationError: ",
                *advice,
            ]
        )
    )
    report = server._log_tail()
    lines = report.splitlines()
    assert lines[0] == "sqlean.dbapi2.OperationalError: unable to open database file"
    assert lines[1] == "phoenix.exceptions.PhoenixMigrationError: "
    assert lines[-1] == "advice line 19"
    assert "OldError" not in report
