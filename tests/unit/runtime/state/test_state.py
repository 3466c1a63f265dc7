"""The state database (SQLite here; the same tests run on PostgreSQL in tests/integration/test_state_postgres.py)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import dspy
import pytest
import sqlalchemy as sa

from geode.errors import ConfigError, ProgramLoadError, VersionError
from geode.runtime.feedback import FeedbackOutbox, make_feedback_record, record_id
from geode.runtime.registry import ProgramRegistry
from geode.runtime.serving.feedback import FeedbackRecord, FeedbackSink
from geode.runtime.serving.sessions import Turn
from geode.runtime.state import (
    RunRecorder,
    ServedRun,
    SqlOutbox,
    SqlPointers,
    SqlRunIndex,
    SqlState,
    sqlite_url,
)
from geode.runtime.state.schema import SCHEMA_VERSION, tables
from geode.runtime.state.sessions import SqlSessionStore

TRACE = "0af7651916cd43dd8448eb211c80319c"


@pytest.fixture
def url(tmp_path: Path) -> str:
    return sqlite_url(tmp_path / "state.db")


def _two(url: str) -> tuple[SqlState, SqlState]:
    # Two engines on one file: what two processes with the same GEODE_HOME have.
    return SqlState(url), SqlState(url)


def test_sessions_are_shared_by_two_engines_and_bounded(url: str) -> None:
    a, b = _two(url)
    now = [1000.0]
    left = SqlSessionStore(a, ttl_s=60, max_turns=2, clock=lambda: now[0])
    right = SqlSessionStore(b, ttl_s=60, max_turns=2, clock=lambda: now[0])
    left.append("k\x1fs", Turn({"q": 1}, {"a": 1}, trace_id=TRACE, version="base"))
    right.append("k\x1fs", Turn({"q": 2}, {"a": 2}))
    left.append("k\x1fs", Turn({"q": 3}, {"a": 3}))
    assert [t.inputs["q"] for t in right.turns("k\x1fs")] == [2, 3]  # the oldest turn dropped
    assert right.turns("other\x1fs") == ()
    now[0] += 61  # idle past the TTL: forgotten, and a new turn starts it afresh
    assert left.turns("k\x1fs") == ()
    right.append("k\x1fs", Turn({"q": 4}, {"a": 4}))
    assert [t.inputs["q"] for t in left.turns("k\x1fs")] == [4]
    assert left.delete("k\x1fs") and not right.delete("k\x1fs")


def test_served_runs_are_found_by_any_engine(url: str) -> None:
    a, b = _two(url)
    SqlRunIndex(a).remember(ServedRun(TRACE, "00f067aa0ba902b7", "qa", "abcd" * 4, "key:1"))
    found = SqlRunIndex(b).find(TRACE)
    assert found is not None and (found.span_id, found.program, found.caller) == (
        "00f067aa0ba902b7",
        "qa",
        "key:1",
    )
    assert SqlRunIndex(b).find("1" * 32) is None
    assert SqlRunIndex(b, retention_s=1e-9).find(TRACE) is None


def test_the_run_recorder_batches_writes_and_never_hides_a_queued_run(url: str) -> None:
    a, b = _two(url)
    # A delay no test waits out: only a flush or close writes the batch.
    recorder = RunRecorder(SqlRunIndex(a), delay_s=60.0)
    other = SqlRunIndex(b)
    runs = [ServedRun(f"{n:032x}", "00f067aa0ba902b7", "qa", None, "key:1") for n in range(1, 301)]
    for run in runs:
        recorder.remember(run)
    # Queued, not written: this replica finds them at once, another one not yet.
    found = recorder.find(runs[0].trace_id)
    assert found is not None and found.caller == "key:1"
    assert other.find(runs[-1].trace_id) is None
    assert recorder.flush(timeout_s=30)
    assert all(other.find(run.trace_id) is not None for run in (runs[0], runs[150], runs[-1]))
    with b.read() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(tables.served_runs)).scalar_one() == 300
    late = ServedRun("f" * 32, "00f067aa0ba902b7", "qa", "v1", "key:2")
    recorder.remember(late)
    recorder.close(timeout_s=30)  # a replica shutting down writes what it queued
    assert other.find(late.trace_id) == ServedRun(
        late.trace_id,
        late.span_id,
        "qa",
        "v1",
        "key:2",
        other.find(late.trace_id).at,  # type: ignore[union-attr]
    )
    with pytest.raises(RuntimeError, match="closed"):
        recorder.remember(late)


def test_a_batch_the_database_refuses_is_logged_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = SqlState(sqlite_url(tmp_path / "state.db"))
    recorder = RunRecorder(SqlRunIndex(state), delay_s=0.0)
    with state.write() as conn:
        conn.execute(sa.text("DROP TABLE geode_served_runs"))
    recorder.remember(ServedRun(TRACE, "00f067aa0ba902b7", "qa", None, "key:1"))
    assert recorder.flush(timeout_s=30)
    assert recorder.failures == 1 and "not recorded in the state database" in caplog.text
    recorder.close()


def test_outbox_dedups_by_id_and_claims_exclusively(url: str) -> None:
    a, b = _two(url)
    left, right = SqlOutbox(a), SqlOutbox(b)
    assert left.add("r1", {"n": 1}) and not right.add("r1", {"n": 1}) and right.add("r2", {"n": 2})
    claimed = left.claim(lease_s=60)
    assert [rid for rid, _ in claimed] == ["r1", "r2"] and right.claim(lease_s=60) == []
    left.release(["r2"])  # given back: the other replica may take it now
    assert [rid for rid, _ in right.claim(lease_s=60)] == ["r2"]
    left.remove(["r1"])
    assert right.ids() == {"r2"} and left.count() == 1
    right.release(["r2"])
    assert [rid for rid, _ in right.claim(lease_s=0.05)] == ["r2"]  # then its sender dies
    assert left.claim(lease_s=60) == []
    time.sleep(0.06)  # the lease lapsed: any replica may deliver it
    assert [rid for rid, _ in left.claim(lease_s=60)] == ["r2"]


def test_a_failed_change_leaves_the_pointer_as_it_was(url: str) -> None:
    pointers = SqlPointers(SqlState(url))
    with pointers.change("qa") as change:
        change.set("a" * 16, [None], {"action": "promote"})
    with pytest.raises(RuntimeError), pointers.change("qa") as change:
        change.set("b" * 16, [None, "a" * 16], {"action": "promote"})
        raise RuntimeError("crashed before commit")
    pointer = pointers.get("qa")
    assert (pointer.active, pointer.history, pointer.revision) == ("a" * 16, (None,), 1)
    assert [e["revision"] for e in pointers.events("qa")] == [1]


def test_a_newer_schema_is_refused_and_migration_is_idempotent(url: str) -> None:
    state = SqlState(url)
    SqlState(url)  # a second open migrates nothing
    with state.read() as conn:
        assert conn.execute(sa.select(tables.meta.c.value)).scalar() == str(SCHEMA_VERSION)
    with state.write() as conn:
        conn.execute(tables.meta.update().values(value=str(SCHEMA_VERSION + 1)))
    with pytest.raises(ConfigError, match="newer than this Geode"):
        SqlState(url)


def test_unsupported_urls_are_refused() -> None:
    with pytest.raises(ConfigError, match="unsupported state database"):
        SqlState("mysql://u:p@localhost/db")


KEY = bytes(range(32))
"""The registry key every registry of one test shares (replicas share ``GEODE_STATE_SIGNING_KEY``)."""


def _compiled(note: str) -> dspy.Module:
    module = dspy.Predict("question -> answer")
    module.demos = [dspy.Example(question=note, answer=note).with_inputs("question")]
    return module


def test_the_old_registry_layout_is_migrated(tmp_path: Path) -> None:
    # The layout before the state database: versions/<v>.json and active.json with history and events.
    programs = tmp_path / "programs"
    reg = ProgramRegistry(programs, key=KEY)
    v1 = reg.save("qa", _compiled("one")).version
    v2 = reg.save("qa", _compiled("two")).version
    events = [
        {"action": "promote", "version": v1, "previous": None, "at": "2026-01-01T00:00:00+00:00"},
        {"action": "promote", "version": v2, "previous": v1, "at": "2026-01-02T00:00:00+00:00"},
    ]
    old = {
        "format": "geode.program-pointer",
        "format_version": 1,
        "program": "qa",
        "active": v2,
        "history": [None, v1],
        "events": events,
    }
    (programs / "qa" / "active.json").write_text(json.dumps(old))
    fresh = tmp_path / "home"
    (fresh / "programs").mkdir(parents=True)
    (programs / "qa").rename(fresh / "programs" / "qa")  # a home that never had a state database

    migrated = ProgramRegistry(fresh / "programs", key=KEY)
    assert migrated.active("qa") == v2 and migrated.history("qa") == [None, v1]
    assert [e["version"] for e in migrated.events("qa")] == [v1, v2]
    assert migrated.programs() == ["qa"]
    assert not (fresh / "programs" / "qa" / "active.json").exists()
    assert (fresh / "programs" / "qa" / "active.json.migrated").exists()
    migrated.rollback("qa")
    assert ProgramRegistry(fresh / "programs", key=KEY).active("qa") == v1  # the database is the truth now


def test_the_old_outbox_file_is_migrated_once(tmp_path: Path) -> None:
    folder = tmp_path / "feedback"
    folder.mkdir()
    records = [make_feedback_record(TRACE, score=s, program="qa") for s in (0.0, 1.0)]
    lines = "".join(json.dumps(r.to_json()) + "\n" for r in records)
    (folder / "outbox.jsonl").write_text(lines)
    state = SqlState(sqlite_url(tmp_path / "state.db"))
    outbox = FeedbackOutbox(folder, _NoPhoenix(), state=state)
    assert outbox.queue.ids() == {record_id(r) for r in records} and outbox.pending == 2
    (folder / "outbox.jsonl").write_text(lines)  # the same records again (a restored backup)
    assert FeedbackOutbox(folder, _NoPhoenix(), state=state).pending == 2
    assert (folder / "outbox.jsonl.migrated").exists()


class _NoPhoenix:
    def root_span(self, record: FeedbackRecord) -> str | None:
        raise AssertionError("not delivering in this test")

    def sink(self) -> FeedbackSink:
        raise AssertionError("not delivering in this test")


def test_a_promotion_against_a_stale_active_version_is_refused(tmp_path: Path) -> None:
    reg = ProgramRegistry(tmp_path / "programs")
    other = ProgramRegistry(tmp_path / "programs", state=SqlState(sqlite_url(tmp_path / "state.db")))
    v1 = reg.save("qa", _compiled("one")).version
    v2 = reg.save("qa", _compiled("two")).version
    reg.promote("qa", v1, force=True, expect_active=None)
    with pytest.raises(VersionError, match=f"active version changed to {v1}"):
        other.promote("qa", v2, force=True, expect_active=None)
    assert other.active("qa") == v1
    other.promote("qa", v2, force=True, expect_active=v1)
    assert reg.active("qa") == v2 and [e["revision"] for e in reg.events("qa")] == [1, 2]


def test_a_replica_sees_a_promotion_within_poll_s(tmp_path: Path) -> None:
    reg = ProgramRegistry(tmp_path / "programs")
    replica = ProgramRegistry(
        tmp_path / "programs", state=SqlState(sqlite_url(tmp_path / "state.db")), poll_s=0.2
    )
    v1 = reg.save("qa", _compiled("one")).version
    assert replica.pointer_stamp("qa") is None
    reg.promote("qa", v1, force=True)
    assert replica.pointer_stamp("qa") is None  # cached: within poll_s the replica may still be behind
    time.sleep(0.25)
    assert replica.pointer_stamp("qa") == (1,)


def test_a_registry_on_another_machine_loads_versions_from_the_database(tmp_path: Path) -> None:
    state = SqlState(sqlite_url(tmp_path / "shared.db"))
    # Another folder: another machine, sharing the registry key as GEODE_STATE_SIGNING_KEY does.
    here = ProgramRegistry(tmp_path / "a" / "programs", state=state, key=KEY)
    there = ProgramRegistry(tmp_path / "b" / "programs", state=state, key=KEY)
    v1 = here.save("qa", _compiled("one")).version
    here.promote("qa", v1, force=True)
    assert there.active("qa") == v1 and [v.version for v in there.versions("qa")] == [v1]
    loaded = there.load_into("qa", v1, dspy.Predict("question -> answer"))
    assert loaded.dump_state()["demos"][0]["question"] == "one"
    # The copy is checked like any file: a tampered one is refused, not trusted for coming from the database.
    copy = tmp_path / "b" / "programs" / "qa" / "versions" / f"{v1}.json"
    copy.write_text(copy.read_text().replace('"one"', '"evil"'))
    with pytest.raises(ProgramLoadError, match="checksum"):
        there.load_state("qa", v1)


def test_version_files_of_the_old_layout_are_shared_on_open(tmp_path: Path) -> None:
    old = ProgramRegistry(
        tmp_path / "a" / "programs", state=SqlState(sqlite_url(tmp_path / "a" / "state.db")), key=KEY
    )
    v1 = old.save("qa", _compiled("one")).version
    shared = SqlState(sqlite_url(tmp_path / "shared.db"))
    ProgramRegistry(tmp_path / "a" / "programs", state=shared, key=KEY)  # shares what only it had
    there = ProgramRegistry(tmp_path / "b" / "programs", state=shared, key=KEY)
    assert [v.version for v in there.versions("qa")] == [v1]


def test_a_version_1_database_is_migrated_to_the_current_schema(url: str) -> None:
    state = SqlState(url)
    with state.write() as conn:  # what Geode's first state schema left
        tables.versions.drop(conn)
        tables.routes.drop(conn)
        conn.execute(tables.meta.update().values(value="1"))
    SqlState(url)
    with state.read() as conn:
        assert conn.execute(sa.select(tables.meta.c.value)).scalar() == str(SCHEMA_VERSION)
        assert conn.execute(sa.select(sa.func.count()).select_from(tables.versions)).scalar() == 0
        assert conn.execute(sa.select(sa.func.count()).select_from(tables.routes)).scalar() == 0
    assert SCHEMA_VERSION == 3


_SQLITE_ONLY = """
import json, sys
from geode.runtime.state import SqlState, sqlite_url
from geode.runtime.state.schema import tables
from pathlib import Path
state = SqlState(sqlite_url(Path(sys.argv[1])))
with state.write() as conn:
    conn.execute(state.upsert(tables.meta, {"key": "probe", "value": "1"}, "key"))
    conn.execute(state.insert_ignore(tables.meta, {"key": "probe", "value": "2"}))
with state.read() as conn:
    value = conn.execute(tables.meta.select().where(tables.meta.c.key == "probe")).one().value
print(json.dumps([value, "sqlalchemy.dialects.postgresql" in sys.modules]))
"""


def test_a_sqlite_database_never_imports_the_postgresql_dialect(tmp_path: Path) -> None:
    # 30 ms of every registered `geode run` start on the default home (issue 19).
    done = subprocess.run(
        [sys.executable, "-c", _SQLITE_ONLY, str(tmp_path / "state.db")],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert json.loads(done.stdout.strip().splitlines()[-1]) == ["1", False]
