from __future__ import annotations

import dspy
import pytest

from geode.examples.inventory import STOCK, TASKS, agent, build_agent, is_correct, lookup_stock
from geode.testing import ScriptedLM


def test_lookup_stock_normalizes_and_helps_with_unknown_items() -> None:
    assert lookup_stock("Widgets") == "widget: 3 units in stock"
    assert lookup_stock(" gadget ") == "gadget: 14 units in stock"
    assert lookup_stock("item") == "Unknown item 'item'. Known items: widget, gadget, sprocket, gizmo."


@pytest.mark.parametrize(
    ("answer", "expected", "correct"),
    [
        ("3", 3, True),
        ("There are 3 widgets.", 3, True),
        ("1,234", 1234, True),
        ("17.0", 17, True),
        ("three", 3, True),
        ("none", 0, True),
        ("4", 3, False),
        ("", 3, False),
        (None, 0, False),
    ],
)
def test_is_correct(answer: object, expected: float, correct: bool) -> None:
    assert is_correct(answer, expected) is correct


def test_tasks_are_consistent_with_the_stock() -> None:
    assert {t.expected for t in TASKS if t.needs == ("lookup_stock",)} <= set(STOCK.values())
    assert all(set(t.needs) <= {"lookup_stock", "calculate"} for t in TASKS)


def test_the_bundled_agent_runs_end_to_end_on_a_scripted_model() -> None:
    assert agent.name == "inventory" and agent.tool_names == ("lookup_stock", "calculate", "finish")
    lm = ScriptedLM(
        [
            {"next_thought": "t", "next_tool_name": "lookup_stock", "next_tool_args": {"item": "widget"}},
            {"next_thought": "t", "next_tool_name": "lookup_stock", "next_tool_args": {"item": "gadget"}},
            {"next_thought": "t", "next_tool_name": "calculate", "next_tool_args": {"expression": "3 + 14"}},
            {"next_thought": "t", "next_tool_name": "finish", "next_tool_args": {}},
            {"reasoning": "r", "answer": "17"},
        ],
        adapter=dspy.JSONAdapter(),
    )
    with dspy.context(lm=lm, adapter=dspy.JSONAdapter()):
        pred = build_agent()(question=TASKS[6].question)
    assert is_correct(pred.answer, TASKS[6].expected)
    assert [s.tool for s in pred.steps] == ["lookup_stock", "lookup_stock", "calculate", "finish"]
