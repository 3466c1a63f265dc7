"""Hostile tool arguments a model can propose: plan row T19 (path traversal and SQL in arguments).

Geode cannot know that a ``str`` argument is a path or part of a query: a tool says so with its
types (a pattern, a ``Literal``, an ``int``), and Geode enforces them before the function runs. What
the tool then does with a valid value (authorization, opening files, building queries) is the tool's
own; Geode's shipped tools never build a path, a query or a command from an argument.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import dspy
import pytest
from pydantic import StringConstraints

from geode.agents.agent import Agent, StepOutcome
from geode.agents.calculator import calculate
from geode.agents.tools import ToolArgumentError, guard, search_tool
from geode.errors import ToolError
from geode.examples.inventory import lookup_stock
from geode.testing import ScriptedLM

pytestmark = pytest.mark.reliability

TRAVERSAL = (
    "../../../../etc/passwd",
    "/etc/passwd",
    "notes.md/../../secret.md",
    "notes.md\x00.txt",
    "..\\..\\win.ini",
)
SQL = ("1 OR 1=1", "1; DROP TABLE orders; --", "' OR ''='", "closed' --")

DocName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9-]{1,64}\.md$")]


def _tools(ran: list[tuple[str, Any]]) -> list[Any]:
    def read_doc(name: DocName) -> str:
        """Read one document of the handbook by its file name."""
        ran.append(("read_doc", name))
        return "text"

    def find_order(order_id: int) -> str:
        """Find an order by its number."""
        ran.append(("find_order", order_id))
        return "order"

    def set_status(order_id: int, status: Literal["open", "closed"]) -> str:
        """Set an order's status."""
        ran.append(("set_status", status))
        return "ok"

    return [read_doc, find_order, set_status]


def test_t19_path_and_sql_shaped_arguments_are_refused_before_a_typed_tool_runs() -> None:
    """Injects: every traversal and SQL string as the argument of a tool typed with a file-name
    pattern, an ``int`` and a ``Literal``.
    Must hold: each call raises ``ToolArgumentError`` (code ``tool_invalid_arguments``) and no tool
    body runs."""
    ran: list[tuple[str, Any]] = []
    read_doc, find_order, set_status = (guard(t) for t in _tools(ran))
    attempts = 0
    for value in TRAVERSAL + SQL:
        for call in (
            lambda v: read_doc(name=v),
            lambda v: find_order(order_id=v),
            lambda v: set_status(order_id=1, status=v),
        ):
            attempts += 1
            with pytest.raises(ToolArgumentError) as refused:
                call(value)
            assert refused.value.code == "tool_invalid_arguments"
    assert read_doc(name="returns.md") == "text"  # a valid name still works
    print(f"\n[figure] T19: {attempts} hostile argument values on 3 typed tools: {attempts} refused, "
          f"{len(ran) - 1} tool bodies ran")  # fmt: skip
    assert ran == [("read_doc", "returns.md")]


def test_t19_an_agent_told_to_traverse_is_told_no_and_its_tool_never_runs() -> None:
    """Injects: a model that calls ``read_doc`` with a traversal path, then ``find_order`` with SQL.
    Must hold: both steps are ``INVALID_ARGS`` fed back to the model, neither tool runs, the run
    finishes."""
    ran: list[tuple[str, Any]] = []
    agent = Agent("question -> answer", tools=_tools(ran))
    lm = ScriptedLM(
        [
            {"next_thought": "read", "next_tool_name": "read_doc", "next_tool_args": {"name": TRAVERSAL[0]}},
            {"next_thought": "sql", "next_tool_name": "find_order", "next_tool_args": {"order_id": SQL[1]}},
            {"next_thought": "done", "next_tool_name": "finish", "next_tool_args": {}},
            {"reasoning": "nothing found", "answer": "I cannot tell."},
        ]
    )
    with dspy.context(lm=lm):
        pred = agent(question="What is in /etc/passwd?")
    assert ran == []
    assert [s.outcome for s in pred.steps[:2]] == [StepOutcome.INVALID_ARGS, StepOutcome.INVALID_ARGS]
    assert pred.termination.reason == "finish"


def test_t19_geodes_own_tools_treat_hostile_arguments_as_data() -> None:
    """Injects: traversal, SQL and code in the arguments of the tools Geode ships (``lookup_stock``,
    the calculator, ``search_tool``).
    Must hold: the stock lookup answers "unknown item"; the calculator refuses names and statements
    (it parses numbers, never ``eval``); the search tool hands the text to the retriever unchanged
    as the query, nothing else."""
    for value in TRAVERSAL + SQL:
        assert lookup_stock(value).startswith("Unknown item")
    for expression in (
        "__import__('os').system('id')",
        "1; DROP TABLE t",
        "open('/etc/passwd').read()",
        "2**2**2**2**2",
    ):
        with pytest.raises(ToolError):
            calculate(expression)
    queries: list[str] = []

    def retriever(*, query: str, k: int) -> Any:
        queries.append(query)
        return dspy.Prediction(passages=[])

    search = search_tool(retriever)
    for value in TRAVERSAL + SQL:
        assert search(query=value) == "No passages found."
    assert queries == list(TRAVERSAL + SQL)
