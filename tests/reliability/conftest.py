"""Fault injectors for the reliability suite: refused ports, black holes, scripted HTTP servers."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest


def refused_port() -> int:
    """A loopback port nothing listens on (connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class BlackHole:
    """Accepts TCP connections and never answers (a hung collector, LM or store)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(512)
        self.port = int(self.sock.getsockname()[1])
        self.accepted: list[socket.socket] = []
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted.append(conn)

    def close(self) -> None:
        self._stop = True
        self._thread.join(2)
        for conn in self.accepted:
            conn.close()
        self.sock.close()


@dataclass
class Reply:
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict[str, str])
    delay_s: float = 0.0


class ScriptedHTTP:
    """An HTTP server answering every request through ``reply(path, body) -> Reply``; counts requests.

    ``keep_alive`` answers HTTP/1.1 and keeps connections open between requests (clients pool them).
    """

    def __init__(self, reply: Callable[[str, bytes], Reply], *, keep_alive: bool = False) -> None:
        self.requests: list[tuple[str, bytes]] = []
        self.peers: list[tuple[str, int]] = []
        """The client address of each request (its connection), in the order of :attr:`requests`."""
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1" if keep_alive else "HTTP/1.0"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                owner.requests.append((self.path, body))
                owner.peers.append(self.client_address[:2])
                answer = reply(self.path, body)
                if answer.delay_s:
                    time.sleep(answer.delay_s)
                payload = (
                    answer.body if isinstance(answer.body, bytes) else json.dumps(answer.body or {}).encode()
                )
                self.send_response(answer.status)
                for key, value in {"Content-Type": "application/json", **answer.headers}.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_POST = _answer
            do_GET = _answer

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def chat_completion(content: str) -> dict[str, Any]:
    """An OpenAI chat completion body."""
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": "fake",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
    }


@pytest.fixture
def black_hole() -> Iterator[BlackHole]:
    hole = BlackHole()
    yield hole
    hole.close()


@pytest.fixture
def http_server() -> Iterator[Callable[..., ScriptedHTTP]]:
    servers: list[ScriptedHTTP] = []

    def start(reply: Callable[[str, bytes], Reply], *, keep_alive: bool = False) -> ScriptedHTTP:
        server = ScriptedHTTP(reply, keep_alive=keep_alive)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()
