"""A workflow spec cannot run code its author chose: refs limited, signatures checked, regexes timed."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import dspy
import pytest
from tests.unit.agents.crystallize.scenario import TRUSTED, Recorded, oracle

import geode
from geode.agents.crystallize import (
    Crystallization,
    CrystallizedWorkflow,
    WorkflowSpec,
    WorkflowSpecError,
    crystallize,
)
from geode.agents.crystallize.trust import SpecTrust, module_allowed
from geode.runtime.programs import resolve
from geode.testing import ScriptedLM

AGENT_REF = "geode.examples.inventory:agent"


@pytest.fixture(scope="module")
def result(recorded: Recorded) -> Crystallization:
    return crystallize(recorded.agent, recorded.source, options=TRUSTED, agent_ref=AGENT_REF)


def _edited(spec: WorkflowSpec, change: Any) -> WorkflowSpec:
    data = spec.model_dump(mode="json")
    change(data)
    return WorkflowSpec.model_validate(data)


def _forge(path: Path, change: Any) -> None:
    """Edit a saved spec and re-seal it with the public content hash, as anyone can."""
    data = json.loads(path.read_text(encoding="utf-8"))
    change(data)
    data["content_hash"] = WorkflowSpec.model_validate({**data, "content_hash": ""}).compute_hash()
    path.write_text(json.dumps(data), encoding="utf-8")


@pytest.fixture
def marker_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path]:
    """A module whose import leaves a marker file: proof of whether a spec made Geode import it."""
    marker = tmp_path / "imported"
    name = f"spec_payload_{abs(hash(tmp_path))}"
    (tmp_path / f"{name}.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
        "import dspy\n"
        "agent = dspy.Predict('question -> answer')\n"
        "def lookup_stock(item: str) -> str:\n"
        "    '''Stock of an item.'''\n"
        "    return f'{item}: 99 units in stock'\n",
        encoding="utf-8",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)
    return name, marker


def test_agent_ref_pointed_at_another_file_and_resealed_never_runs_it(
    result: Crystallization, tmp_path: Path, marker_module: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Tried on the old main: `geode run` on such a spec ran the file.
    name, marker = marker_module
    path = result.save(tmp_path / "wf.json")
    _forge(path, lambda d: d.update(agent_ref=str(tmp_path / f"{name}.py") + ":agent"))
    with pytest.raises(WorkflowSpecError, match="does not verify"):
        resolve(str(path))
    with pytest.raises(WorkflowSpecError, match="does not verify"):
        CrystallizedWorkflow(path)
    # Even with unsigned specs allowed, an agent outside the allowed modules is not imported.
    monkeypatch.setenv("GEODE_WORKFLOWS_ALLOW_UNSIGNED", "true")
    with pytest.raises(WorkflowSpecError, match="not in a module the operator allows"):
        resolve(str(path))
    with pytest.raises(WorkflowSpecError, match="not in a module the operator allows"):
        CrystallizedWorkflow(path)
    assert not marker.exists()


def test_an_unsigned_spec_with_an_allowed_agent_loads_when_unsigned_specs_are_allowed(
    result: Crystallization, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = result.save(tmp_path / "wf.json", trust=SpecTrust())
    monkeypatch.setenv("GEODE_WORKFLOWS_ALLOW_UNSIGNED", "true")
    with pytest.raises(WorkflowSpecError, match="not in a module the operator allows"):
        CrystallizedWorkflow(path)
    monkeypatch.setenv("GEODE_WORKFLOWS_ALLOWED_MODULES", '["geode.examples"]')
    workflow = CrystallizedWorkflow(path)
    with dspy.context(lm=ScriptedLM(oracle)):
        assert workflow(question="What is 6 times 7?").answer == "42"


def test_a_tool_ref_that_is_not_the_agents_tool_is_imported_only_from_allowed_modules(
    result: Crystallization, recorded: Recorded, marker_module: tuple[str, Path]
) -> None:
    name, marker = marker_module

    def point(data: dict[str, Any]) -> None:
        for tool in data["tools"]:
            if tool["name"] == "lookup_stock":
                tool["ref"] = f"{name}:lookup_stock"

    spec = _edited(result.spec, point)
    with pytest.raises(WorkflowSpecError, match="not the agent's tool of that name"):
        CrystallizedWorkflow(spec, agent=recorded.agent)
    assert not marker.exists()
    allowed = SpecTrust(allowed_modules=(name,))
    workflow = CrystallizedWorkflow(spec, agent=recorded.agent, trust=allowed)
    assert marker.exists()
    with dspy.context(lm=ScriptedLM(oracle)):
        assert workflow(question="How many sprockets are in stock?").answer == "99"


def test_a_spec_regex_that_backtracks_is_cut_off_and_the_agent_answers(
    result: Crystallization, recorded: Recorded
) -> None:
    # `((?:a|a)+)b` on 30 "a"s and no "b" is 2^30 backtracking steps (minutes with `re`, GIL held).
    def catastrophic(data: dict[str, Any]) -> None:
        for route in data["routes"]:
            if route["label"] == "lookup_stock":
                route["steps"][-1]["outputs"]["answer"]["pattern"] = "((?:a|a)+)b"

    spec = _edited(result.spec, catastrophic)

    def lookup_stock(item: str) -> str:
        """A tool result shaped to make the pattern backtrack."""
        return "a" * 30

    workflow = CrystallizedWorkflow(spec, agent=recorded.agent, tools={"lookup_stock": lookup_stock})
    start = time.perf_counter()
    with dspy.context(lm=ScriptedLM(oracle)):
        pred = workflow(question="How many sprockets are in stock?")
    assert time.perf_counter() - start < 5
    choice = geode.fallback_choice(pred)
    assert choice is not None and choice.choice == "fallback" and "ran past" in (choice.reason or "")
    assert pred.answer == "27"  # the agent, with its own tool


def test_module_prefixes_match_whole_names() -> None:
    assert module_allowed("acme", ("acme",)) and module_allowed("acme.tools.x", ("acme.tools",))
    assert not module_allowed("acmex", ("acme",)) and not module_allowed("acme", ("",))
