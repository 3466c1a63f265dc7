"""Start `geode serve` in a subprocess on a free loopback port, for integration and reliability tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
PROGRAMS = HERE / "serve_programs.py"
REPO = HERE.parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Served:
    url: str
    process: subprocess.Popen[str]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, timeout_s: float = 60.0) -> float:
        """SIGTERM, then wait; returns the seconds the process took to exit."""
        started = time.monotonic()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
                raise AssertionError(
                    f"the server did not stop within {timeout_s} s:\n{self.output()[-3000:]}"
                ) from None
        return time.monotonic() - started


@contextmanager
def serve(
    refs: Sequence[str],
    home: Path,
    *,
    args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    ready_timeout_s: float = 90.0,
) -> Iterator[Served]:
    """Run `geode serve` until the block ends (the process is stopped and reaped either way)."""
    port = free_port()
    log = home / f"serve-{port}.log"
    home.mkdir(parents=True, exist_ok=True)
    environment = {
        **os.environ,
        "GEODE_HOME": str(home),
        "PYTHONPATH": str(REPO / "src"),
        "NO_PROXY": "127.0.0.1,localhost",
        **(env or {}),
    }
    command = [
        sys.executable,
        "-m",
        "geode",
        "serve",
        *refs,
        "--port",
        str(port),
        "--lm",
        "openai/unused",
        "--log-level",
        "warning",
        *args,
    ]
    with log.open("w") as sink:
        process = subprocess.Popen(
            command, stdout=sink, stderr=subprocess.STDOUT, text=True, env=environment, cwd=REPO
        )
    served = Served(f"http://127.0.0.1:{port}", process, log)
    try:
        deadline = time.monotonic() + ready_timeout_s
        while True:
            if process.poll() is not None:
                raise AssertionError(
                    f"geode serve exited with {process.returncode}:\n{served.output()[-3000:]}"
                )
            try:
                if httpx.get(f"{served.url}/ready", timeout=1.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"geode serve not ready in {ready_timeout_s} s:\n{served.output()[-3000:]}"
                )
            time.sleep(0.2)
        yield served
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
