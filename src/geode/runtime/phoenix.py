"""Start, reuse and stop a local Phoenix server (``phoenix serve``) that keeps its data in the Geode home.

``geode phoenix`` and the integration tests use :class:`PhoenixServer`. It runs Phoenix as a detached
process bound to ``127.0.0.1`` (by default), with its SQLite database and log under
``<home>/phoenix``, and records the process in ``phoenix.pid`` (the pid) and ``phoenix.json`` (pid, URL,
ports) there, so a later ``geode phoenix --stop`` or the runtime can find it. A Phoenix that already
answers on the port is reused; a port held by anything else is reported (or, when asked, another port
is chosen). Start-up takes about 45 s on an idle 2-core machine, so :meth:`PhoenixServer.start` waits
with a deadline and a spinner.

Phoenix itself (the ``arize-phoenix`` package, Elastic License 2.0) is an optional extra, run only as a
separate process.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

from geode.errors import MissingExtraError, PhoenixPortInUseError, PhoenixStartError
from geode.runtime.settings import PhoenixSettings, Settings

if TYPE_CHECKING:
    import httpx

__all__ = [
    "PhoenixPortInUseError",
    "PhoenixServer",
    "PhoenixStartError",
    "PhoenixStatus",
    "find_free_port",
    "local_phoenix_url",
    "probe_port",
    "started_phoenix_url",
]

_PROBE_TIMEOUT_S: Final = 1.0
_LOG_TAIL_LINES: Final = 12
_START_MARKER: Final = "--- geode: starting Phoenix"
_EXCEPTION_LINE: Final = re.compile(r"^[\w.]*(Error|Exception)\b.*")
PortState = Literal["phoenix", "other", "free"]


@dataclass(frozen=True)
class PhoenixStatus:
    """What is known about the local Phoenix server."""

    url: str
    """Base URL of the web UI and REST API; spans go to ``<url>/v1/traces``."""
    running: bool
    """A Phoenix answers at :attr:`url`."""
    version: str | None
    """The version it reports, when running."""
    pid: int | None
    """The process Geode started, if it is alive."""
    grpc_port: int | None
    """OTLP/gRPC port of the process Geode started."""
    working_dir: Path | None
    """Where its SQLite database lives, when Geode started it (unknown otherwise)."""
    log_path: Path
    reused: bool = False
    """``start()`` found it already running and did not start another."""

    @property
    def managed(self) -> bool:
        """Geode started this server (so ``geode phoenix --stop`` can stop it)."""
        return self.pid is not None

    @property
    def collector_endpoint(self) -> str:
        """The OTLP/HTTP endpoint to send spans to."""
        return f"{self.url}/v1/traces"


@dataclass(frozen=True)
class _State:
    pid: int
    host: str
    port: int
    grpc_port: int
    url: str
    working_dir: str
    started_at: float


def probe_port(host: str, port: int, *, timeout_s: float = _PROBE_TIMEOUT_S) -> tuple[PortState, str | None]:
    """What listens on ``host:port``: a Phoenix (with its version), something else, or nothing."""
    import httpx  # here, not at the top: every runtime start imports this module, few use HTTP

    try:
        response = _local_get(f"http://{_url_host(host)}:{port}/arize_phoenix_version", timeout_s)
        text = response.text.strip()
        if response.status_code == 200 and text[:1].isdigit() and len(text) < 40:
            return "phoenix", text
    except httpx.HTTPError:
        pass
    return ("free", None) if _bindable(host, port) else ("other", None)


def find_free_port(host: str = "127.0.0.1") -> int:
    """A port the OS reports free on ``host`` right now."""
    with socket.socket(_family(host), socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def started_phoenix_url(settings: Settings, *, timeout_s: float = 0.05) -> str | None:
    """The URL of the Phoenix that ``geode phoenix`` started for this home, if it still listens.

    ``geode phoenix`` picks another port when the configured one is taken, and records it in its state
    file; this reads that file and probes the port (TCP only, no HTTP), so it is cheap enough for every
    runtime start.
    """
    state = PhoenixServer.from_settings(settings)._read_state()
    if state is None:
        return None
    host = "127.0.0.1" if state.host in ("0.0.0.0", "") else state.host
    try:
        with socket.create_connection((host, state.port), timeout=timeout_s):
            return f"http://{_url_host(host)}:{state.port}"
    except OSError:
        return None


def local_phoenix_url(settings: Settings, *, timeout_s: float = 0.3) -> str | None:
    """The URL of a Phoenix running locally (the one ``geode phoenix`` started, or on the configured port).

    Costs one local HTTP request (a refused connection returns at once); for the runtime to decide
    whether to export spans when no endpoint is configured.
    """
    import httpx

    server = PhoenixServer.from_settings(settings)
    candidates = []
    state = server._read_state()
    if state is not None:
        candidates.append((state.host, state.port))
    candidates.append((settings.phoenix.host, settings.phoenix.port))
    for host, port in dict.fromkeys(candidates):
        try:
            response = _local_get(f"http://{_url_host(host)}:{port}/arize_phoenix_version", timeout_s)
        except httpx.HTTPError:
            continue
        if response.status_code == 200 and response.text.strip()[:1].isdigit():
            return f"http://{_url_host(host)}:{port}"
    return None


class PhoenixServer:
    """A local ``phoenix serve`` process: start (or reuse), check, stop.

    Args:
        settings: Host, ports and start-up deadline.
        working_dir: Phoenix's data folder (``PHOENIX_WORKING_DIR``); its log and pid file go here too.

    Example:
        >>> from geode.runtime.settings import Settings
        >>> server = PhoenixServer.from_settings(Settings(home=".geode"))
        >>> server.log_path.as_posix()
        '.geode/phoenix/phoenix.log'
    """

    def __init__(self, settings: PhoenixSettings, *, working_dir: Path) -> None:
        self.settings = settings
        self.working_dir = working_dir
        self._process: subprocess.Popen[bytes] | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> PhoenixServer:
        """The server for these settings, with its data in ``settings.phoenix_dir``."""
        return cls(settings.phoenix, working_dir=settings.phoenix_dir)

    @property
    def log_path(self) -> Path:
        """Phoenix's combined stdout/stderr."""
        return self.working_dir / "phoenix.log"

    @property
    def pid_path(self) -> Path:
        """The pid of the process Geode started."""
        return self.working_dir / "phoenix.pid"

    @property
    def state_path(self) -> Path:
        """JSON with the pid, URL and ports of the process Geode started."""
        return self.working_dir / "phoenix.json"

    def url_for(self, port: int) -> str:
        """The base URL for a port on the configured host."""
        return f"http://{_url_host(self.settings.host)}:{port}"

    # -- status ------------------------------------------------------------------------------------

    def status(self) -> PhoenixStatus:
        """Whether a Phoenix runs where Geode would look for it (the started one first)."""
        state = self._live_state()
        host, port = (state.host, state.port) if state else (self.settings.host, self.settings.port)
        found, version = probe_port(host, port)
        return PhoenixStatus(
            url=f"http://{_url_host(host)}:{port}",
            running=found == "phoenix",
            version=version,
            pid=state.pid if state else None,
            grpc_port=state.grpc_port if state else None,
            working_dir=self.working_dir if state else None,
            log_path=self.log_path,
        )

    # -- start -------------------------------------------------------------------------------------

    def start(
        self,
        *,
        port: int | None = None,
        grpc_port: int | None = None,
        any_port: bool = False,
        wait: bool = True,
        progress: bool = False,
    ) -> PhoenixStatus:
        """Start Phoenix, or reuse the one already running, and wait until it is ready.

        Args:
            port: HTTP port (UI, REST, OTLP/HTTP); default ``settings.port``.
            grpc_port: OTLP/gRPC port; default ``settings.grpc_port``, or a free port if that is taken.
            any_port: If the HTTP port is held by another program, pick a free one instead of failing.
            wait: Wait for readiness (up to ``settings.start_timeout_s``).
            progress: Show a spinner on stderr while waiting.

        Returns:
            The running server's status (``reused`` when it was already up).

        Raises:
            PhoenixPortInUseError: The port is held by another program and ``any_port`` is false.
            MissingExtraError: The Phoenix server package is not installed.
            PhoenixStartError: Phoenix exited during start-up or missed the deadline (it is stopped then).
        """
        state = self._live_state()
        if state is not None:
            # Ours is running or still starting: never start a second one on top of it.
            if wait:
                self._wait_ready(state, progress=progress)
            return self._status_for(state, reused=True)

        http_port = port if port is not None else self.settings.port
        found, version = probe_port(self.settings.host, http_port)
        if found == "phoenix":
            return PhoenixStatus(
                url=self.url_for(http_port),
                running=True,
                version=version,
                pid=None,
                grpc_port=None,
                working_dir=None,
                log_path=self.log_path,
                reused=True,
            )
        if found == "other":
            if not any_port:
                raise PhoenixPortInUseError(
                    f"port {http_port} on {self.settings.host} is in use by another program (not Phoenix)",
                    hint="stop it, choose another port with --port N (GEODE_PHOENIX_PORT), "
                    "or pass --any-port to pick a free one",
                )
            http_port = find_free_port(self.settings.host)

        wanted_grpc = grpc_port if grpc_port is not None else self.settings.grpc_port
        if wanted_grpc == http_port or not _bindable(self.settings.host, wanted_grpc):
            # Phoenix refuses to start without its gRPC port; spans go over HTTP anyway.
            wanted_grpc = find_free_port(self.settings.host)
        state = self._spawn(http_port, wanted_grpc)
        if wait:
            self._wait_ready(state, progress=progress)
        return self._status_for(state, reused=False)

    def _spawn(self, port: int, grpc_port: int) -> _State:
        if not _server_installed():
            raise MissingExtraError("the local Phoenix server (`geode phoenix`)", "phoenix")
        self.working_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env.update(
            PHOENIX_HOST=self.settings.host,
            PHOENIX_PORT=str(port),
            PHOENIX_GRPC_PORT=str(grpc_port),
            PHOENIX_WORKING_DIR=str(self.working_dir.resolve()),
        )
        # A local developer tool: no web fonts, telemetry pixels or downloads unless the user opts in.
        env.setdefault("PHOENIX_ALLOW_EXTERNAL_RESOURCES", "false")
        env.setdefault("PHOENIX_TELEMETRY_ENABLED", "false")
        with self.log_path.open("ab") as log:
            log.write(f"\n{_START_MARKER} on {self.url_for(port)} at {time.ctime()} ---\n".encode())
            log.flush()
            self._process = subprocess.Popen(
                [*_phoenix_command(), "serve"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.working_dir,
                env=env,
                start_new_session=True,  # detached: outlives `geode phoenix`, ignores the terminal's Ctrl-C
            )
        state = _State(
            pid=self._process.pid,
            host=self.settings.host,
            port=port,
            grpc_port=grpc_port,
            url=self.url_for(port),
            working_dir=str(self.working_dir),
            started_at=time.time(),
        )
        self._write_state(state)
        return state

    def _wait_ready(self, state: _State, *, progress: bool) -> None:
        timeout = self.settings.start_timeout_s
        started = time.monotonic()
        with _spinner(progress) as update:
            while True:
                elapsed = time.monotonic() - started
                update(f"waiting for Phoenix at {state.url} to start ({elapsed:.0f}s, takes ~45s)")
                if _ready(state.url):
                    return
                if not self._alive(state.pid):
                    self._clear_state()
                    raise PhoenixStartError(
                        f"Phoenix exited during start-up; last lines of its log:\n{self._log_tail()}",
                        hint=f"full log: {self.log_path}",
                    )
                if elapsed >= timeout:
                    self._terminate(state.pid, timeout_s=10.0)
                    self._clear_state()
                    raise PhoenixStartError(
                        f"Phoenix did not become ready at {state.url} within {timeout:.0f}s (stopped it)",
                        hint="a busy machine starts it slowly: raise GEODE_PHOENIX_START_TIMEOUT_S; "
                        f"log: {self.log_path}",
                    )
                time.sleep(0.5)

    # -- stop --------------------------------------------------------------------------------------

    def stop(self, *, timeout_s: float = 20.0) -> bool:
        """Stop the Phoenix that Geode started here (SIGTERM, then SIGKILL after ``timeout_s``).

        Returns:
            ``True`` if a process was stopped, ``False`` if none Geode started was running.
        """
        state = self._read_state()
        if state is None:
            return False
        stopped = False
        if self._alive(state.pid) and _looks_like_phoenix(state.pid):
            self._terminate(state.pid, timeout_s=timeout_s)
            stopped = True
        self._clear_state()
        return stopped

    def _terminate(self, pid: int, *, timeout_s: float) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                # The server was started as its own session: signal its whole group (workers included).
                if os.getpgid(pid) == pid:
                    os.killpg(pid, sig)
                else:
                    os.kill(pid, sig)
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                if not self._alive(pid):
                    return
                time.sleep(0.1)

    # -- state file --------------------------------------------------------------------------------

    def _status_for(self, state: _State, *, reused: bool) -> PhoenixStatus:
        found, version = probe_port(state.host, state.port)
        return PhoenixStatus(
            url=state.url,
            running=found == "phoenix",
            version=version,
            pid=state.pid,
            grpc_port=state.grpc_port,
            working_dir=self.working_dir,
            log_path=self.log_path,
            reused=reused,
        )

    def _read_state(self) -> _State | None:
        try:
            data: dict[str, Any] = json.loads(self.state_path.read_text())
            return _State(**data)
        except (OSError, ValueError, TypeError):
            return None

    def _live_state(self) -> _State | None:
        state = self._read_state()
        if state is None:
            return None
        if self._alive(state.pid) and _looks_like_phoenix(state.pid):
            return state
        self._clear_state()  # stale: the process is gone (or the pid was reused by something else)
        return None

    def _write_state(self, state: _State) -> None:
        self.state_path.write_text(json.dumps(asdict(state), indent=2) + "\n")
        self.pid_path.write_text(f"{state.pid}\n")

    def _clear_state(self) -> None:
        for path in (self.state_path, self.pid_path):
            path.unlink(missing_ok=True)

    def _alive(self, pid: int) -> bool:
        if self._process is not None and self._process.pid == pid:
            return self._process.poll() is None  # also reaps our own child, so it is no zombie
        return _pid_alive(pid)

    def _log_tail(self) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        # Only this start's output; the exception lines first, since Phoenix's last words are often advice.
        lines = text.rsplit(_START_MARKER, 1)[-1].splitlines()
        errors = [line for line in lines if _EXCEPTION_LINE.match(line)]
        tail = lines[-_LOG_TAIL_LINES:]
        picked = [e for e in errors[-3:] if e not in tail]
        return "\n".join([*picked, *(["..."] if picked else []), *tail])


# -- helpers --------------------------------------------------------------------------------------

_LOCAL_HTTP: httpx.Client | None = None
_LOCAL_HTTP_LOCK = threading.Lock()


def _local_get(url: str, timeout_s: float) -> httpx.Response:
    """GET from a local server: one shared client (no TLS set-up per call), proxies from env ignored."""
    import httpx

    global _LOCAL_HTTP
    with _LOCAL_HTTP_LOCK:
        if _LOCAL_HTTP is None:
            _LOCAL_HTTP = httpx.Client(trust_env=False)
        client = _LOCAL_HTTP
    return client.get(url, timeout=timeout_s)


def _server_installed() -> bool:
    # Package metadata only: importing anything under `phoenix` runs the server package's __init__,
    # which loads the whole server (tens of seconds on a busy machine) in this process.
    try:
        importlib.metadata.distribution("arize-phoenix")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def _phoenix_command() -> list[str]:
    script = Path(sys.executable).parent / "phoenix"
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-m", "phoenix.server.main"]


def _ready(url: str) -> bool:
    import httpx

    try:
        response = _local_get(f"{url}/readyz", _PROBE_TIMEOUT_S)
        if response.status_code == 404:  # servers before /readyz existed
            response = _local_get(f"{url}/healthz", _PROBE_TIMEOUT_S)
        return response.status_code == 200
    except httpx.HTTPError:
        return False


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _bindable(host: str, port: int) -> bool:
    with socket.socket(_family(host), socket.SOCK_STREAM) as sock:
        # As uvicorn and grpc do: a port whose old connections linger in TIME_WAIT still counts as free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    if stat.exists():
        with contextlib.suppress(OSError, IndexError):
            # The state letter follows the parenthesised command name; Z is a zombie (already dead).
            return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return True


def _looks_like_phoenix(pid: int) -> bool:
    cmdline = Path(f"/proc/{pid}/cmdline")
    if not cmdline.exists():
        return True  # no /proc (macOS): trust the pid file
    try:
        return b"phoenix" in cmdline.read_bytes()
    except OSError:
        return False


@contextlib.contextmanager
def _spinner(enabled: bool) -> Iterator[Any]:
    if not enabled:
        yield lambda _message: None
        return
    from rich.console import Console

    with Console(stderr=True).status("starting Phoenix") as status:
        yield lambda message: status.update(message)
