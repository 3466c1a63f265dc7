"""A browser calls a hosted agent on `geode serve`: headless Chromium, driven over DevTools, runs the
page's own `fetch` against the JSON and streaming endpoints (same origin as the server).

Marked ``browser`` (CI installs Debian's chromium). `/docs` is not used: Swagger UI loads its
scripts from a CDN, which a machine without internet cannot reach.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from .serve_helpers import PROGRAMS, serve
from .test_phoenix_ui import DevTools, browser  # noqa: F401  (the fixture, shared)

pytestmark = pytest.mark.browser


def _evaluate(page: DevTools, expression: str) -> Any:
    result = page.call("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
    assert "exceptionDetails" not in result, result
    return result["result"]["value"]


def test_a_browser_calls_the_hosted_agent(tmp_path: Path, browser: DevTools) -> None:  # noqa: F811
    with serve([f"support={PROGRAMS}:injected_agent", f"story={PROGRAMS}:storyteller"], tmp_path) as served:
        browser.call("Page.navigate", url=f"{served.url}/health")
        assert _evaluate(browser, "fetch('/health').then(r => r.json())") == {"status": "ok"}

        answer = _evaluate(
            browser,
            """fetch('/programs/support', {
                   method: 'POST',
                   headers: {'Content-Type': 'application/json'},
                   body: JSON.stringify({question: 'How long does shipping take?', session_id: 'web-1'}),
               }).then(async r => ({status: r.status, trace: r.headers.get('X-Trace-Id'), body: await r.json()}))""",
        )
        assert answer["status"] == 200, answer
        assert answer["body"]["outputs"]["answer"] == "3 days"
        assert answer["trace"] == answer["body"]["trace_id"] and len(answer["trace"]) == 32

        # The stream read with the browser's ReadableStream: chunks arrive as separate reads.
        events = _evaluate(
            browser,
            """(async () => {
                   const r = await fetch('/programs/story/stream', {
                       method: 'POST', headers: {'Content-Type': 'application/json'},
                       body: JSON.stringify({question: 'a story'})});
                   const reader = r.body.getReader(); const decoder = new TextDecoder();
                   let text = '', reads = 0;
                   for (;;) { const {done, value} = await reader.read(); if (done) break;
                              reads += 1; text += decoder.decode(value, {stream: true}); }
                   return {reads, text};
               })()""",
        )
    blocks = [b for b in events["text"].split("\n\n") if b]
    names = [b.split("\n")[0].removeprefix("event: ") for b in blocks]
    assert names[-2:] == ["prediction", "done"]
    assert json.loads(blocks[-2].split("data: ", 1)[1])["outputs"]["mood"] == "calm"
    assert names.count("token") >= 8 and events["reads"] >= 8
