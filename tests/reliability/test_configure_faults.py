"""A served program calling ``dspy.configure`` gets a clear error; other requests are unaffected (T26).

Injects: a program that calls ``dspy.configure(adapter=JSONAdapter(), ...)`` inside its request (a
sync one, run in a worker thread, and an async one, run on the event loop in the main thread), 12
requests each interleaved with 24 requests to an ordinary program, 8 at a time, on a real
`geode serve`.
Must hold: every request of the configuring program answers 500 ``program_configures_dspy`` with a
message naming ``dspy.context`` (not an anonymous ``internal_error``), none succeeds on a lucky
thread, and every other request answers 200 with its own echo: no setting changed for anyone.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from tests.integration.serve_helpers import PROGRAMS, serve

pytestmark = pytest.mark.reliability


def test_t26_dspy_configure_in_a_request_is_refused_clearly_and_changes_nothing(tmp_path: Path) -> None:
    programs = [
        f"qa={PROGRAMS}:qa",
        f"configures={PROGRAMS}:configures",
        f"configures_async={PROGRAMS}:configures_async",
    ]
    kinds = ("configures", "qa", "configures_async", "qa")
    jobs = [(kinds[n % 4], n) for n in range(48)]
    with (
        serve(programs, tmp_path / "home") as served,
        httpx.Client(base_url=served.url, timeout=60) as client,
    ):

        def send(job: tuple[str, int]) -> tuple[str, int, httpx.Response]:
            program, n = job
            return program, n, client.post(f"/programs/{program}", json={"question": f"q-{n}"})

        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(send, jobs))
    refused = 0
    for program, n, response in results:
        if program.startswith("configures"):
            assert response.status_code == 500, response.text
            error = response.json()["error"]
            assert error["code"] == "program_configures_dspy", error
            assert "dspy.configure" in error["message"] and "dspy.context" in error["message"]
            refused += 1
        else:
            assert response.status_code == 200, response.text
            assert response.json()["outputs"]["answer"] == f"echo: q-{n}"
    print(
        f"\n[figure] T26: {refused}/{refused} dspy.configure calls in requests refused "
        f"(program_configures_dspy, 500); {len(results) - refused} other requests answered 200 with their own echo"
    )
