"""The generated Python module imports, runs, and answers like the spec it came from."""

from __future__ import annotations

import ast
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import dspy
import pytest
from tests.unit.agents.crystallize.scenario import TRUSTED, Recorded, notes_agent, oracle, record_runs

import geode
from geode.agents.crystallize import Crystallization, CrystallizeError, crystallize, emit_python
from geode.testing import ScriptedLM


@pytest.fixture(scope="module")
def result(recorded: Recorded) -> Crystallization:
    return crystallize(
        recorded.agent, recorded.source, options=TRUSTED, agent_ref="geode.examples.inventory:agent"
    )


def _import(path: Path, source: str) -> ModuleType:
    path.write_text(source, encoding="utf-8")
    name = f"generated_workflow_{abs(hash(path))}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_generated_module_runs_like_the_spec(result: Crystallization, tmp_path: Path) -> None:
    source = emit_python(result.spec)
    tree = ast.parse(source)
    classes = [n.name for n in tree.body if isinstance(n, ast.ClassDef)]
    assert classes == [
        "RouterSignature",
        "CalculateAnswerSignature",
        "LookupStockEachThenCalculatePlan2Signature",
        "InventoryWorkflow",
    ]
    assert "eval(" not in source and "exec(" not in source and "pickle" not in source
    module = _import(tmp_path / "workflow_gen.py", source)
    questions = [
        "How many sprockets are in stock?",
        "What is 6 times 7?",
        "How many gizmos and widgets are in stock together?",
        "Tell me a joke",
    ]
    spec_lm, gen_lm = ScriptedLM(oracle), ScriptedLM(oracle)
    with dspy.context(lm=spec_lm):
        expected = [result.workflow()(question=q) for q in questions]
    with dspy.context(lm=gen_lm):
        got = [module.workflow(question=q) for q in questions]
    assert [p.answer for p in got] == [p.answer for p in expected] == ["27", "42", "3", "?"]
    choices = [geode.fallback_choice(p).choice for p in got]  # type: ignore[union-attr]
    assert choices == ["primary", "primary", "primary", "fallback"]
    # Same prompts, same number of LM calls.
    assert [c.answer for c in gen_lm.calls] == [c.answer for c in spec_lm.calls]
    assert module.InventoryWorkflow().router.demos[0].question == "How many widgets are in stock?"


def test_single_route_module(recorded: Recorded, tmp_path: Path) -> None:
    spec = crystallize(
        recorded.agent,
        recorded.source,
        options=TRUSTED,
        agent_ref="geode.examples.inventory:agent",
        min_share=0.4,
    ).spec
    module = _import(tmp_path / "single.py", emit_python(spec))
    with dspy.context(lm=ScriptedLM(oracle)):
        assert module.workflow(question="How many gadgets are in stock?").answer == "14"


def test_no_agent_no_module(recorded: Recorded) -> None:
    spec = crystallize(recorded.agent, recorded.source, options=TRUSTED).spec
    with pytest.raises(CrystallizeError, match="names no agent_ref"):
        emit_python(spec)


def test_a_tool_without_a_reference_comes_from_the_agent(tmp_path: Path) -> None:
    questions = ["What is the return policy?", "How fast do you ship?", "Is there a warranty?"]
    notes = [
        "Returns are accepted within 30 days.",
        "Orders ship within 2 days.",
        "Every widget has a 1 year warranty.",
    ]
    script: list[dict[str, Any]] = []
    for question, note in zip(questions, notes, strict=True):
        script += [
            {"next_thought": "Search.", "next_tool_name": "search", "next_tool_args": {"query": question}},
            {"next_thought": "Done.", "next_tool_name": "finish", "next_tool_args": {}},
            {"reasoning": "The note says so.", "answer": note},
        ]
    recorded = record_runs(questions, agent=notes_agent, lm=ScriptedLM(script))
    spec = crystallize(
        notes_agent,
        recorded.source,
        options=TRUSTED,
        agent_ref="tests.unit.agents.crystallize.scenario:notes_agent",
    ).spec
    assert [t.ref for t in spec.tools] == [None]  # a closure: taken from the agent by name
    module = _import(tmp_path / "notes.py", emit_python(spec))
    lm = ScriptedLM([])  # the route needs no LM at all: query = the question, answer = the note
    with dspy.context(lm=lm):
        pred = module.workflow(question="Can I return it?")
    assert pred.answer == "Returns are accepted within 30 days." and lm.calls == []
