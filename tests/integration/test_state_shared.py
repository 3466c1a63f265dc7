"""Two real `geode serve` processes on one GEODE_HOME behave as one service (the SQLite state database).

A session begun on one continues on the other, feedback for a run served by one is accepted by the
other (and only from the API key the run was served to), and a promotion made with the CLI is served by
both within GEODE_STATE_POLL_S. The same on PostgreSQL across Ray Serve replicas: test_serve_ray.py.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx

from .serve_helpers import PROGRAMS, REPO, serve

_KEYS = ("state-test-key-one-0123456789", "state-test-key-two-0123456789")
_ENV = {
    "GEODE_SERVE_API_KEYS": f'["{_KEYS[0]}", "{_KEYS[1]}"]',
    # Runs need trace ids for feedback: spans go to an OTLP-JSON file (no Phoenix here).
    "GEODE_TRACING_ENDPOINT": "http://127.0.0.1:9",
    "GEODE_STATE_POLL_S": "0.5",
}


def _client(url: str, key: str) -> httpx.Client:
    return httpx.Client(base_url=url, timeout=30, headers={"Authorization": f"Bearer {key}"})


def test_two_servers_on_one_home_share_sessions_and_feedback(tmp_path: Path) -> None:
    home = tmp_path / "home"
    refs = [f"chat={PROGRAMS}:chat"]
    with serve(refs, home, env=_ENV) as a, serve(refs, home, env=_ENV) as b:
        with _client(a.url, _KEYS[0]) as on_a, _client(b.url, _KEYS[0]) as on_b:
            first = on_a.post("/programs/chat", json={"question": "hi", "session_id": "s1"})
            assert first.status_code == 200, first.text
            assert first.json()["outputs"]["answer"] == "turns seen: 0"
            second = on_b.post("/programs/chat", json={"question": "again", "session_id": "s1"})
            assert second.json()["outputs"]["answer"] == "turns seen: 1", second.text
            third = on_a.post("/programs/chat", json={"question": "more", "session_id": "s1"})
            assert third.json()["outputs"]["answer"] == "turns seen: 2"
            turns = on_b.get("/sessions/s1").json()["turns"]
            assert [t["inputs"]["question"] for t in turns] == ["hi", "again", "more"]

            trace_id = first.json()["trace_id"]
            accepted = on_b.post("/feedback", json={"trace_id": trace_id, "score": 1, "name": "thumbs"})
            assert accepted.status_code == 202, accepted.text
        with _client(b.url, _KEYS[1]) as other_key:
            # The other API key neither sees the session nor may score the run, on either server.
            assert other_key.get("/sessions/s1").json()["turns"] == []
            refused = other_key.post("/feedback", json={"trace_id": trace_id, "score": 0})
            assert refused.status_code == 404, refused.text
    assert b.process.returncode is not None


def test_a_promotion_is_served_by_both_servers(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {**_ENV, "GEODE_HOME": str(home), "PYTHONPATH": str(REPO / "src")}
    compiled = tmp_path / "compiled.json"
    # A compiled state of `chat` (one demo), imported as a version with the CLI, then promoted.
    code = (
        "import dspy, sys; sys.path.insert(0, sys.argv[2]); import serve_programs as p; "
        "p.chat.predict.demos = [dspy.Example(question='q', answer='a', history=dspy.History(messages=[]))]; "
        "p.chat.save(sys.argv[1])"
    )
    subprocess.run([sys.executable, "-c", code, str(compiled), str(PROGRAMS.parent)], check=True, env=env)
    ref = f"{PROGRAMS}:chat"
    with serve([f"chat={ref}"], home, env=_ENV) as a, serve([f"chat={ref}"], home, env=_ENV) as b:
        with _client(a.url, _KEYS[0]) as on_a, _client(b.url, _KEYS[0]) as on_b:
            before = {
                c.post("/programs/chat", json={"question": "x"}).headers["x-geode-version"]
                for c in (on_a, on_b)
            }
            assert before == {"base"}
            cli = [sys.executable, "-m", "geode"]
            imported = subprocess.run(
                [*cli, "versions", ref, "--import", str(compiled)],
                capture_output=True,
                text=True,
                env=env,
                cwd=REPO,
            )
            assert imported.returncode == 0, imported.stdout + imported.stderr
            version = imported.stdout.split("stored ", 1)[1].split()[0]
            promoted = subprocess.run(
                [*cli, "promote", ref, version, "--force"], capture_output=True, text=True, env=env, cwd=REPO
            )
            assert promoted.returncode == 0, promoted.stdout + promoted.stderr
            deadline = time.monotonic() + 5.0
            seen: set[str] = set()
            while time.monotonic() < deadline:
                seen = {
                    c.post("/programs/chat", json={"question": "x"}).headers["x-geode-version"]
                    for c in (on_a, on_b)
                }
                if "base" not in seen:
                    break
                time.sleep(0.1)
            assert seen == {version}, seen
