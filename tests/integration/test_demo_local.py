"""The real `geode demo`: the embedded model, local embeddings and a real Phoenix it starts itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from geode.runtime.phoenix import PhoenixServer, find_free_port
from geode.runtime.settings import PhoenixSettings
from geode.traces.sources import OtlpFileTraceSource, PhoenixTraceSource, TraceFilter

# Two demo runs and a Phoenix start: 415 s alone on the 2-core machine (7 December), and past the
# suite's 600 s default in the slow tier after the other local-model tests. The runs have their own
# 3,600 s limits; this one stops a hung test without cutting a slow one short.
pytestmark = [pytest.mark.slow, pytest.mark.localmodel, pytest.mark.phoenix, pytest.mark.timeout(1800)]


def test_geode_demo_ends_in_the_summary_with_its_traces_in_phoenix(tmp_path: Path) -> None:
    home = tmp_path / ".geode"
    port = find_free_port()
    env = {
        **os.environ,
        "GEODE_HOME": str(home),
        "GEODE_PHOENIX_PORT": str(port),
        "GEODE_PHOENIX_START_TIMEOUT_S": "900",
        "COLUMNS": "200",
    }
    command = [
        sys.executable,
        "-m",
        "geode",
        "demo",
        "--questions",
        "2",
        "--held-out",
        "2",
        "--validation",
        "2",
    ]
    try:
        done = subprocess.run(
            [*command, "--json"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=3600
        )
        assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
        # --json: stdout is the summary document, the table and progress went to stderr.
        doc = json.loads(done.stdout)
        out = done.stderr
        for text in ("quality", "LM calls", "latency p50", "agent", "gate:", "By hand", "geode crystallize"):
            assert text in out, out
        assert f"Phoenix: http://127.0.0.1:{port}" in out

        latest = json.loads((home / "demo" / "latest.json").read_text())
        assert latest == doc
        assert latest["programs"][0]["name"] == "agent" and latest["programs"][0]["n"] == 2
        assert latest["programs"][0]["lm_calls_per_question"] > 0 and latest["seconds"] > 0
        assert latest["phoenix_url"] == f"http://127.0.0.1:{port}"
        assert Path(latest["report"]).is_file()
        spans = Path(latest["run_dir"]) / "spans.jsonl"
        runs = list(OtlpFileTraceSource(spans).traces(TraceFilter(program="helpdesk-agent")))
        trace_ids = [t.trace_id for t in runs]
        assert len(trace_ids) >= 2

        # The training runs are in Phoenix, in the demo's project.
        with PhoenixTraceSource(f"http://127.0.0.1:{port}", project="geode-demo") as phoenix:
            wait = phoenix.wait_for(trace_ids, timeout_s=300)
        assert wait.complete, wait.missing

        # Re-running reuses the store: nothing is embedded again.
        again = subprocess.run(
            [*command[:4], "--questions", "2", "--held-out", "1", "--validation", "1", "--no-phoenix"],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=3600,
        )
        assert again.returncode == 0, again.stdout[-4000:] + again.stderr[-4000:]
        assert "0 file(s) embedded" in again.stdout
    finally:
        PhoenixServer(PhoenixSettings(port=port), working_dir=home / "phoenix").stop()
