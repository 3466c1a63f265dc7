"""Open a trace in the Phoenix UI with headless Chromium and check the span tree it renders.

Drives Debian's ``chromium`` over the DevTools protocol (no Playwright download): navigates to the
trace, waits until the span tree has rendered every span, checks it, and saves a screenshot in the test's
temp folder. With ``GEODE_REFRESH_DOC_IMAGES=1`` (``make doc-images``) the screenshot also replaces
``docs/img/phoenix-trace.png``, the picture docs/phoenix.md shows; a plain test run never writes into the
checkout. Install the browser with ``apt-get install chromium`` (see scripts/install.sh, optional step).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from itertools import count
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.tiers import require_tier, skip_tier

import geode
from geode.cli.run import trace_link as geode_run_trace_link
from geode.runtime.phoenix import PhoenixStatus, find_free_port
from geode.runtime.settings import Settings, TracingSettings
from geode.testing import ScriptedLM
from geode.traces.records import TraceRecord
from geode.traces.sources import OtlpFileTraceSource, PhoenixTraceSource

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOT = ROOT / "docs" / "img" / "phoenix-trace.png"
WAIT_S = 120.0
QUESTION = "What are the widgets in stock worth?"


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    skip_tier(
        "browser", "no Chromium found: apt-get install chromium (or GEODE_INSTALL_CHROMIUM=1 make install)"
    )


class DevTools:
    """A minimal Chrome DevTools Protocol session on one page."""

    def __init__(self, websocket_url: str) -> None:
        from websockets.sync.client import connect

        self._stack = contextlib.ExitStack()
        self._socket = self._stack.enter_context(connect(websocket_url, max_size=None, open_timeout=30))
        self._ids = count(1)

    def call(self, method: str, timeout_s: float = 60.0, **params: Any) -> dict[str, Any]:
        message_id = next(self._ids)
        self._socket.send(json.dumps({"id": message_id, "method": method, "params": params}))
        deadline = time.monotonic() + timeout_s
        while True:
            reply = json.loads(self._socket.recv(timeout=max(deadline - time.monotonic(), 0.1)))
            if reply.get("id") == message_id:  # anything else is an event we did not subscribe to use
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def text(self) -> str:
        result = self.call("Runtime.evaluate", expression="document.body ? document.body.innerText : ''")
        return str(result.get("result", {}).get("value", ""))

    def close(self) -> None:
        self._stack.close()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[DevTools]:
    require_tier(
        "browser", import_name="websockets", reason="the DevTools session uses the websockets package"
    )
    port = find_free_port()
    process = subprocess.Popen(
        [
            _chromium(),
            "--headless",
            "--no-sandbox",  # containers run as root without user namespaces
            "--disable-gpu",
            "--hide-scrollbars",
            "--no-first-run",
            f"--remote-debugging-port={port}",
            f"--user-data-dir={tmp_path / 'chromium'}",
            "--window-size=1400,1100",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: renderer and zygote children go down with it
    )
    try:
        deadline = time.monotonic() + 60
        page: dict[str, Any] | None = None
        while page is None:
            try:
                targets = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=2).json()
                page = next((t for t in targets if t.get("type") == "page"), None)
            except httpx.HTTPError:
                pass
            if page is None:
                assert time.monotonic() < deadline, "Chromium did not open its DevTools port"
                time.sleep(0.25)
        session = DevTools(page["webSocketDebuggerUrl"])
        try:
            yield session
        finally:
            session.close()
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def lookup_stock(item: str) -> int:
    """Units of an item in stock."""
    return {"widget": 7, "gadget": 14}[item]


def price(item: str) -> float:
    """Unit price of an item, in euros."""
    return {"widget": 2.5, "gadget": 4.0}[item]


def _step(tool: str, thought: str, **args: object) -> dict[str, object]:
    return {"next_thought": thought, "next_tool_name": tool, "next_tool_args": args}


def _run_agent(phoenix: PhoenixStatus, project: str, tmp_path: Path) -> TraceRecord:
    """Run a geode.Agent with two tools through a Runtime exporting to Phoenix; its trace as Phoenix has it."""
    spans_file = tmp_path / "spans.jsonl"
    settings = Settings(
        home=tmp_path / "home",
        tracing=TracingSettings(endpoint=phoenix.url, project=project, otlp_file=spans_file),
    )
    agent = geode.Agent("question -> answer", tools=[lookup_stock, price])
    lm = ScriptedLM(
        [
            _step("lookup_stock", "First, how many widgets are in stock.", item="widget"),
            _step("price", "Then their unit price.", item="widget"),
            _step("finish", "7 widgets at 2.50 EUR each."),
            {"reasoning": "7 x 2.50 = 17.50", "answer": "17.50 EUR"},
        ]
    )
    with geode.Runtime(settings=settings, lm=lm) as rt:
        rt.run(agent, question=QUESTION, session_id="demo-session")
    (trace,) = OtlpFileTraceSource(spans_file).traces()
    with PhoenixTraceSource(phoenix.url, project) as source:
        result = source.wait_for([trace.trace_id], timeout_s=WAIT_S)
        assert result.complete, f"Phoenix did not ingest the trace within {WAIT_S}s"
    return result.traces[0]


def test_trace_tree_renders_in_phoenix_ui(phoenix: PhoenixStatus, browser: DevTools, tmp_path: Path) -> None:
    project = f"geode-demo-{uuid.uuid4().hex[:6]}"
    trace = _run_agent(phoenix, project, tmp_path)
    trace_id, names = trace.trace_id, [span.name for span, _ in trace.walk()]
    assert trace.root is not None and trace.root.kind == "AGENT"
    root_span_id = trace.root.span_id
    # The link `geode run` prints: Phoenix's redirect finds the trace's project and opens the trace.
    url = geode_run_trace_link(f"{phoenix.url}/v1/traces", trace_id)
    assert url == f"{phoenix.url}/redirects/traces/{trace_id}"

    browser.call(
        "Emulation.setDeviceMetricsOverride", width=1400, height=1100, deviceScaleFactor=1, mobile=False
    )
    browser.call("Page.navigate", url=url)
    deadline = time.monotonic() + WAIT_S
    text = ""
    while time.monotonic() < deadline:
        text = browser.text()
        # The span tree lists every span by name; the details pane, once loaded, heads with the selected
        # root span's id (nothing else on the page shows it).
        tree_done = all(text.count(name) >= names.count(name) for name in set(names))
        if trace_id in text and tree_done and root_span_id in text:
            break
        time.sleep(0.5)
    else:
        pytest.fail(f"the Phoenix UI never showed the whole span tree; page text:\n{text[:2000]}")
    assert "agent" in text.lower()
    time.sleep(1.0)  # let the last layout pass and icons settle before the picture

    shot = browser.call("Page.captureScreenshot", format="png")
    png = base64.b64decode(shot["data"])
    assert png.startswith(b"\x89PNG") and len(png) > 20_000
    (tmp_path / "phoenix-trace.png").write_bytes(png)
    if os.environ.get("GEODE_REFRESH_DOC_IMAGES") == "1":
        SCREENSHOT.write_bytes(png)
