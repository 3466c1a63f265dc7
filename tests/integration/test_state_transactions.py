"""Promotions on the shared state database, on SQLite and on a real PostgreSQL (tier `postgres`).

A process killed with SIGKILL at any point of a promote or rollback leaves the old or the new active
version with its event, never none or half; concurrent promotions from two processes serialise, and the
one that compared against a stale active version is told; and every unit-level guarantee of the state
database (shared sessions, run index, outbox claims) holds on PostgreSQL too.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import dspy
import pytest

from geode.errors import VersionError
from geode.runtime.registry import ProgramRegistry
from geode.runtime.serving.sessions import Turn
from geode.runtime.state import (
    Route,
    RunRecorder,
    ServedRun,
    SqlOutbox,
    SqlRunIndex,
    SqlState,
    sqlite_url,
)
from geode.runtime.state.sessions import SqlSessionStore

from .serve_helpers import REPO

WORKER = Path(__file__).with_name("state_worker.py")
TRACE = "0af7651916cd43dd8448eb211c80319c"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(URL, schema): a SQLite file, or a fresh schema on the session's PostgreSQL."""
    if request.param == "sqlite":
        yield sqlite_url(tmp_path / "state.db"), "geode"
    else:
        yield request.getfixturevalue("postgres_url"), f"t_{uuid.uuid4().hex[:12]}"


def _versions(registry: ProgramRegistry, n: int) -> list[str]:
    out = []
    for i in range(n):
        module = dspy.Predict("question -> answer")
        module.demos = [dspy.Example(question=str(i), answer=str(i)).with_inputs("question")]
        out.append(registry.save("qa", module).version)
    return out


def _worker(url: str, schema: str, root: Path, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    return subprocess.Popen(
        [sys.executable, str(WORKER), url, schema, str(root), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def test_kill_9_during_promotions_leaves_a_whole_pointer(database: tuple[str, str], tmp_path: Path) -> None:
    url, schema = database
    root = tmp_path / "programs"
    registry = ProgramRegistry(root, state=SqlState(url, schema_name=schema))
    v1, v2 = _versions(registry, 2)
    registry.promote("qa", v1, force=True)
    rng = random.Random(18)
    for _ in range(4):
        worker = _worker(url, schema, root, "flip", v1, v2)
        assert worker.stdout is not None
        assert worker.stdout.readline().strip() == "ready", worker.stderr.read() if worker.stderr else ""
        worker.stdout.readline()  # it has completed a promote and a rollback: it is mid-loop now
        time.sleep(rng.uniform(0.0, 0.05))
        worker.send_signal(signal.SIGKILL)
        worker.wait(30)
        fresh = ProgramRegistry(root, state=SqlState(url, schema_name=schema))
        active, history, events = fresh.active("qa"), fresh.history("qa"), fresh.events("qa")
        assert active in (v1, v2)
        assert history == ([None] if active == v1 else [None, v1])
        assert events[-1]["version"] == active  # the log records exactly what the pointer says
        assert [e["revision"] for e in events] == list(range(1, len(events) + 1))
        assert fresh.pointer_stamp("qa") == (len(events),)
    # After the kills the registry still promotes and rolls back.
    if registry.active("qa") == v2:
        registry.rollback("qa")
    registry.promote("qa", v2, force=True)
    assert registry.active("qa") == v2


def test_concurrent_promotions_serialise_and_the_loser_is_told(
    database: tuple[str, str], tmp_path: Path
) -> None:
    url, schema = database
    root = tmp_path / "programs"
    registry = ProgramRegistry(root, state=SqlState(url, schema_name=schema))
    v0, v1, v2 = _versions(registry, 3)
    registry.promote("qa", v0, force=True)
    start = f"{time.time() + 6.0:.3f}"  # both are imported and waiting by then; then they race
    workers = [_worker(url, schema, root, "promote", v, v0, start) for v in (v1, v2)]
    outputs = [w.communicate(timeout=120) for w in workers]
    results = [out.strip() for out, _ in outputs]
    assert sorted(r.split(":")[0] for r in results) == ["told", "won"], outputs
    winner = (v1, v2)[results.index("won")]
    loser = next(r for r in results if r.startswith("told"))
    assert f"changed to {winner}" in loser
    assert registry.active("qa") == winner
    assert [e["version"] for e in registry.events("qa")] == [v0, winner]


def test_the_state_parts_are_shared_between_engines(database: tuple[str, str]) -> None:
    url, schema = database
    a, b = SqlState(url, schema_name=schema), SqlState(url, schema_name=schema)
    SqlSessionStore(a).append("k\x1fs", Turn({"q": 1}, {"a": 1}))
    SqlSessionStore(b).append("k\x1fs", Turn({"q": 2}, {"a": 2}))
    assert [t.inputs["q"] for t in SqlSessionStore(a).turns("k\x1fs")] == [1, 2]
    SqlRunIndex(a).remember(ServedRun(TRACE, "00f067aa0ba902b7", "qa", None, "key:1"))
    found = SqlRunIndex(b).find(TRACE)
    assert found is not None and found.caller == "key:1"
    left, right = SqlOutbox(a), SqlOutbox(b)
    assert left.add("r1", {"n": 1}) and not right.add("r1", {"n": 1})
    assert [rid for rid, _ in left.claim(lease_s=60)] == ["r1"] and right.claim(lease_s=60) == []
    left.remove(["r1"])
    assert right.count() == 0


def test_routes_are_shared_and_end_when_their_version_is_promoted(
    database: tuple[str, str], tmp_path: Path
) -> None:
    url, schema = database
    # Two machines: their own registry folders, one database, one registry key (GEODE_STATE_SIGNING_KEY).
    key = bytes(range(32))
    admin = ProgramRegistry(tmp_path / "a" / "programs", state=SqlState(url, schema_name=schema), key=key)
    replica = ProgramRegistry(
        tmp_path / "b" / "programs", state=SqlState(url, schema_name=schema), poll_s=0.2, key=key
    )
    v1, v2, v3 = _versions(admin, 3)
    admin.promote("qa", v1, force=True)
    before = replica.pointer_stamp("qa")
    admin.set_route("qa", canary=v2, canary_share=0.3, shadow=v3)
    time.sleep(0.25)  # past the replica's poll_s: the route change bumped the pointer's revision
    assert replica.pointer_stamp("qa") != before
    assert replica.route("qa") == Route(v2, 0.3, v3, 1.0)
    with pytest.raises(VersionError, match="changed meanwhile"):
        replica.set_route("qa", canary=v3, expect_route=Route())  # read before the admin's change
    replica.promote("qa", v2, force=True)
    assert admin.route("qa") == Route(None, 0.0, v3, 1.0)
    assert [e["action"] for e in admin.events("qa")] == ["promote", "route", "promote"]


def test_batched_run_records_reach_every_engine(database: tuple[str, str]) -> None:
    url, schema = database
    a, b = SqlState(url, schema_name=schema), SqlState(url, schema_name=schema)
    recorder = RunRecorder(SqlRunIndex(a), delay_s=60.0)
    traces = [f"{n:032x}" for n in range(1, 51)]
    for trace in traces:
        recorder.remember(ServedRun(trace, "00f067aa0ba902b7", "qa", None, "key:1"))
    assert recorder.flush(timeout_s=30)
    # A second batch naming a recorded run replaces it (the upsert's conflict path).
    recorder.remember(ServedRun(traces[0], "00f067aa0ba902b7", "qa", "v2", "key:2"))
    recorder.close(timeout_s=30)
    other = SqlRunIndex(b)
    assert all(other.find(trace) is not None for trace in traces)
    replaced = other.find(traces[0])
    assert replaced is not None and (replaced.version, replaced.caller) == ("v2", "key:2")


def test_concurrent_appends_to_one_session_keep_every_turn(database: tuple[str, str]) -> None:
    url, schema = database
    stores = [SqlSessionStore(SqlState(url, schema_name=schema), max_turns=100) for _ in range(2)]

    def append(n: int) -> None:
        store = stores[n % 2]
        for i in range(20):
            store.append("k\x1fshared", Turn({"q": f"{n}-{i}"}, {"a": i}))

    threads = [threading.Thread(target=append, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    # Each append locks the session's row: none overwrites another's turn.
    assert len(stores[0].turns("k\x1fshared")) == 80
