"""T42: version files are HMAC-signed with the registry key; a rewrite with a recomputed hash is refused."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import dspy
import pytest
from pydantic import SecretStr
from sqlalchemy import select

from geode.cli import main
from geode.errors import ProgramLoadError
from geode.runtime.registry import ProgramRegistry
from geode.runtime.registry_trust import registry_key
from geode.runtime.settings import Settings, StateSettings
from geode.runtime.state import SqlState, sqlite_url
from geode.runtime.state.schema import tables

KEY = bytes(range(32))


def _compiled(text: str) -> dspy.Module:
    module = dspy.Predict("question -> answer")
    module.demos = [dspy.Example(question=f"q {text}", answer=f"a {text}").with_inputs("question")]
    return module


def _rewrite(path: Path, *, keep_mac: bool = True) -> None:
    """What someone with write access but no key can do: edit the metadata and recompute the checksum."""
    doc = json.loads(path.read_text())
    doc["metadata"]["note"] = "rewritten"
    content = {"version": doc["version"], "metadata": doc["metadata"], "state": doc["state"]}
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    doc["checksum"] = hashlib.sha256(canonical.encode()).hexdigest()
    if not keep_mac:
        doc.pop("mac")
    path.write_text(json.dumps(doc))


def _path(reg: ProgramRegistry, version: str) -> Path:
    return reg.program_dir("qa") / "versions" / f"{version}.json"


def test_a_saved_version_is_signed_and_round_trips(tmp_path: Path) -> None:
    reg = ProgramRegistry(tmp_path / "programs", key=KEY)
    info = reg.save("qa", _compiled("one"), note="first")
    assert json.loads(_path(reg, info.version).read_text())["mac"].startswith("hmac-sha256:")
    loaded = ProgramRegistry(tmp_path / "programs", key=KEY).load_into(
        "qa", info.version, dspy.Predict("question -> answer")
    )
    assert loaded.dump_state()["demos"][0]["question"] == "q one"
    assert reg.info("qa", info.version).note == "first"


def test_a_rewrite_with_a_recomputed_checksum_is_refused(tmp_path: Path) -> None:
    reg = ProgramRegistry(tmp_path / "programs", key=KEY)
    version = reg.save("qa", _compiled("one")).version
    _rewrite(_path(reg, version))
    with pytest.raises(ProgramLoadError, match="MAC mismatch") as err:
        reg.info("qa", version)
    assert "GEODE_STATE_SIGNING_KEY" in str(err.value)
    assert [why for _, why in reg.scan("qa")[1]] and reg.versions("qa") == []


def test_a_rewrite_in_the_state_database_is_refused_by_a_replica(tmp_path: Path) -> None:
    # The database holds the version files other machines materialise: a rewrite there is refused too.
    state = SqlState(sqlite_url(tmp_path / "shared.db"))
    here = ProgramRegistry(tmp_path / "a" / "programs", state=state, key=KEY)
    version = here.save("qa", _compiled("one")).version
    _rewrite(_path(here, version))
    with state.write() as conn:
        t = tables.versions
        conn.execute(t.update().where(t.c.version == version).values(doc=_path(here, version).read_text()))
    there = ProgramRegistry(tmp_path / "b" / "programs", state=state, key=KEY)
    with pytest.raises(ProgramLoadError, match="MAC mismatch"):
        there.load_state("qa", version)


def test_a_replica_with_another_key_refuses_and_one_with_the_same_key_loads(tmp_path: Path) -> None:
    state = SqlState(sqlite_url(tmp_path / "shared.db"))
    version = (
        ProgramRegistry(tmp_path / "a" / "programs", state=state, key=KEY)
        .save("qa", _compiled("one"))
        .version
    )
    stranger = ProgramRegistry(tmp_path / "b" / "programs", state=state)  # its own generated key
    with pytest.raises(ProgramLoadError, match="another key"):
        stranger.load_state("qa", version)
    shared = ProgramRegistry(tmp_path / "c" / "programs", state=state, key=KEY)
    assert shared.info("qa", version).version == version


def test_unsigned_files_are_refused_until_the_operator_signs_them(tmp_path: Path) -> None:
    reg = ProgramRegistry(tmp_path / "programs", key=KEY)
    old = reg.save("qa", _compiled("old")).version
    forged = reg.save("qa", _compiled("forged")).version
    path = _path(reg, old)
    doc = json.loads(path.read_text())
    doc.pop("mac")  # a file written before registry keys: plain checksum only
    path.write_text(json.dumps(doc))
    _rewrite(_path(reg, forged))  # wrong MAC: never re-signed (that would launder a rewrite)
    with pytest.raises(ProgramLoadError, match="not signed") as err:
        reg.info("qa", old)
    assert "--sign-unsigned" in str(err.value)
    assert reg.sign_unsigned("qa") == [old]
    assert reg.info("qa", old).version == old
    with pytest.raises(ProgramLoadError, match="MAC mismatch"):
        reg.info("qa", forged)
    with reg.state.read() as conn:  # the database copy is signed too, so replicas accept it
        t = tables.versions
        stored = conn.execute(select(t.c.doc).where(t.c.version == old)).scalar_one()
    assert "mac" in json.loads(stored)


def test_the_runtime_key_is_the_setting_else_the_homes_generated_key(tmp_path: Path) -> None:
    generated = registry_key(Settings(home=tmp_path))
    assert (tmp_path / "keys" / "registry-signing.key").stat().st_mode & 0o077 == 0
    assert registry_key(Settings(home=tmp_path)) == generated
    assert registry_key(Settings(home=tmp_path, state=StateSettings(signing_key=SecretStr(KEY.hex())))) == KEY


def test_geode_versions_sign_unsigned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GEODE_HOME", str(tmp_path))
    reg = ProgramRegistry(tmp_path / "programs")  # the home's generated key, as the CLI's runtime uses
    version = reg.save("qa", _compiled("old")).version
    path = _path(reg, version)
    doc = json.loads(path.read_text())
    doc.pop("mac")
    path.write_text(json.dumps(doc))
    try:
        main(["versions", "qa", "--sign-unsigned", "--json"])
    except SystemExit as exc:
        assert not exc.code
    assert reg.info("qa", version).version == version
