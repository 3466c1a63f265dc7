"""With no registry anywhere, the runtime serves the base program without opening one (issue 19).

The fast path is asked again on every call: a version registered later, here or by another process,
serves from then on.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import dspy
from pydantic import SecretStr

from geode.runtime.programs import register_program
from geode.runtime.runtime import Runtime
from geode.runtime.settings import Settings, StateSettings, TracingSettings
from geode.runtime.state import sqlite_url
from geode.testing import ScriptedLM


class QA(dspy.Module):
    def __init__(self) -> None:
        super().__init__()
        self.answer = dspy.Predict("question -> answer")

    def forward(self, question: str) -> dspy.Prediction:
        return self.answer(question=question)


def _with_demo() -> QA:
    program = QA()
    program.answer.demos = [dspy.Example(question="demo question", answer="demo answer")]
    return program


def _settings(home: Path, state: StateSettings | None = None) -> Settings:
    return Settings(home=home, tracing=TracingSettings(enabled=False), state=state or StateSettings())


def _registered() -> str:
    name = f"qa-{uuid.uuid4().hex[:8]}"
    register_program(name, QA)
    return name


def test_nothing_registered_serves_the_base_program_and_creates_nothing(tmp_path: Path) -> None:
    name = _registered()
    home = tmp_path / "home"
    rt = Runtime(_settings(home), lm=ScriptedLM([{"answer": "a"}, {"answer": "b"}]))
    served = rt.serve(name)
    assert (served.name, served.version, served.problem) == (name, None, None)
    assert isinstance(served.module, QA)
    assert rt.run(name, question="q").answer == "a"
    assert rt.serve(name).module is served.module  # the same base instance, call after call
    # No state database, programs folder or signing key was made just to learn nothing is registered.
    assert not home.exists()


def test_a_version_registered_after_the_first_call_is_then_served(tmp_path: Path) -> None:
    name = _registered()
    home = tmp_path / "home"
    rt = Runtime(_settings(home), lm=ScriptedLM([{"answer": "a"}]))
    assert rt.serve(name).version is None
    # Another process (here another runtime on the same home) registers and promotes a version.
    other = Runtime(_settings(home), lm=ScriptedLM([]))
    version = other.registry.save(name, _with_demo()).version
    other.registry.promote(name, version, force=True)
    served = rt.serve(name)
    assert served.version == version
    assert isinstance(served.module, QA) and served.module.answer.demos


def test_a_state_url_opens_the_registry_even_without_a_home(tmp_path: Path) -> None:
    name = _registered()
    database = tmp_path / "elsewhere" / "state.db"
    state = StateSettings(url=SecretStr(sqlite_url(database)))
    rt = Runtime(_settings(tmp_path / "home", state=state), lm=ScriptedLM([]))
    assert rt.serve(name).version is None
    assert database.exists()  # the configured database was opened: nothing was assumed


def test_an_injected_registry_is_always_asked(tmp_path: Path) -> None:
    name = _registered()
    builder = Runtime(_settings(tmp_path / "home"), lm=ScriptedLM([]))
    version = builder.registry.save(name, _with_demo()).version
    builder.registry.promote(name, version, force=True)
    # A runtime on an empty home, handed that registry: it serves the registry's active version.
    rt = Runtime(_settings(tmp_path / "empty"), lm=ScriptedLM([]), registry=builder.registry)
    assert rt.serve(name).version == version


_IMPORTS = """
import json, sys
from pathlib import Path
from geode.runtime.runtime import Runtime
from geode.runtime.settings import Settings, TracingSettings
from geode.testing import ScriptedLM
home = Path(sys.argv[1])
if sys.argv[2] == "registered":
    (home / "programs").mkdir(parents=True)
rt = Runtime(Settings(home=home, tracing=TracingSettings(enabled=False)), lm=ScriptedLM([{"answer": "x"}]))
rt.run("geode.examples.qa:program", question="What is the capital of France?")
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] == "sqlalchemy" and "." not in m)))
"""


def _imports_sqlalchemy(home: Path, case: str) -> bool:
    # A fresh interpreter: in this one, other tests have imported SQLAlchemy already.
    done = subprocess.run(
        [sys.executable, "-c", _IMPORTS, str(home), case],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return json.loads(done.stdout.strip().splitlines()[-1]) == ["sqlalchemy"]


def test_the_fast_path_imports_no_sqlalchemy(tmp_path: Path) -> None:
    assert not _imports_sqlalchemy(tmp_path / "empty", "empty")
    # The same run with a programs folder opens the registry: the check above can see the import.
    assert _imports_sqlalchemy(tmp_path / "registered", "registered")
