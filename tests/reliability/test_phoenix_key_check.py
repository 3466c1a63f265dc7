"""`geode serve` says at start-up when Phoenix refuses its API key (T07).

Injects: a collector that answers 401 to everything (Phoenix with auth on and a wrong or missing
key), and one that answers 200 (the key is accepted), behind a real `geode serve`.
Must hold: with the 401 collector the server's log says, within seconds of start-up and before any
span is sent, that Phoenix refused the key and names PHOENIX_API_KEY; with the 200 collector it says
nothing of the kind; the server is ready either way (the check never delays start-up).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from pydantic import SecretStr
from tests.integration.serve_helpers import PROGRAMS, serve

from geode.runtime.settings import PhoenixSettings, Settings, TracingSettings
from geode.runtime.tracing.keycheck import check_phoenix_key

from .conftest import Reply, ScriptedHTTP, refused_port

pytestmark = pytest.mark.reliability

Server = Callable[[Callable[[str, bytes], Reply]], ScriptedHTTP]


def _settings(tmp_path: Path, endpoint: str, key: str | None) -> Settings:
    return Settings(
        home=tmp_path,
        tracing=TracingSettings(endpoint=endpoint),
        phoenix=PhoenixSettings(api_key=SecretStr(key) if key else None),
    )


def test_t07_the_check_names_the_fix_only_for_401_and_403(tmp_path: Path, http_server: Server) -> None:
    refusing = http_server(lambda path, body: Reply(401, {"detail": "Invalid token"}))
    forbidden = http_server(lambda path, body: Reply(403, {}))
    accepting = http_server(lambda path, body: Reply(200, {"data": []}))
    not_phoenix = http_server(lambda path, body: Reply(404, {}))
    wrong = check_phoenix_key(_settings(tmp_path, f"{refusing.url}/v1/traces", "wrong-key"))
    assert wrong is not None and "refused PHOENIX_API_KEY (HTTP 401)" in wrong
    missing = check_phoenix_key(_settings(tmp_path, refusing.url, None))
    assert missing is not None and "none is set" in missing and "PHOENIX_API_KEY" in missing
    assert check_phoenix_key(_settings(tmp_path, forbidden.url, "k")) is not None
    assert refusing.requests[0][0].startswith("/v1/projects")
    assert check_phoenix_key(_settings(tmp_path, accepting.url, "k")) is None
    assert check_phoenix_key(_settings(tmp_path, not_phoenix.url, "k")) is None  # not a key problem
    assert check_phoenix_key(_settings(tmp_path, f"http://127.0.0.1:{refused_port()}", "k")) is None


@pytest.mark.parametrize("answer", [401, 200])
def test_t07_geode_serve_warns_at_start_up_when_phoenix_refuses_the_key(
    tmp_path: Path, http_server: Server, answer: int
) -> None:
    collector = http_server(lambda path, body: Reply(answer, {}))
    env = {
        "GEODE_TRACING_ENABLED": "true",
        "PHOENIX_COLLECTOR_ENDPOINT": collector.url,
        "PHOENIX_API_KEY": "a-key-phoenix-does-not-know",
    }
    with serve([f"qa={PROGRAMS}:qa"], tmp_path / "home", env=env) as served:
        deadline = time.monotonic() + 10
        while "PHOENIX_API_KEY" not in served.output() and time.monotonic() < deadline and answer == 401:
            time.sleep(0.2)
        if answer == 200:
            time.sleep(2)  # the check has long answered: a warning would be there by now
        log = served.output()
        spans_sent = sum(1 for path, _ in collector.requests if path.endswith("/v1/traces"))
        served.stop()
    if answer == 401:
        assert "refused PHOENIX_API_KEY (HTTP 401)" in log, log[-2000:]
        assert spans_sent == 0  # said at start-up, before any span went out
        print("\n[figure] T07: the key refusal is logged at start-up, before any span is exported")
    else:
        assert "PHOENIX_API_KEY" not in log, log[-2000:]
