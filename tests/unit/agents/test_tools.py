from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import dspy
import pytest
from dspy.utils.callback import BaseCallback
from pydantic import BaseModel

from geode.agents.tools import (
    GuardedTool,
    ToolArgumentError,
    guard,
    remaining_seconds,
    run_deadline,
    search_tool,
    tool,
)
from geode.errors import BudgetExceededError, ConfigError, ToolError, ToolTimeoutError
from geode.testing import ScriptedLM


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """Set at teardown so abandoned 'hanging' tool threads finish promptly."""
    event = threading.Event()
    yield event
    event.set()


class ToolEvents(BaseCallback):
    def __init__(self) -> None:
        self.started: list[tuple[str, dict[str, Any]]] = []
        self.ended: list[BaseException | None] = []

    def on_tool_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        self.started.append((instance.name, inputs))

    def on_tool_end(self, call_id: str, outputs: Any, exception: BaseException | None = None) -> None:
        self.ended.append(exception)


def add(a: int, b: int = 2) -> int:
    """Add two numbers.

    Indented second line.
    """
    return a + b


def test_plain_function_becomes_a_tool() -> None:
    t = guard(add)
    assert isinstance(t, GuardedTool)
    assert t.name == "add"
    assert t.desc == "Add two numbers. Indented second line."
    assert t(a=1) == 3
    assert t(a="4", b=1) == 5  # lax conversion to the annotated type
    assert t.args_schema == {
        "type": "object",
        "properties": {"a": {"type": "integer"}, "b": {"type": "integer", "default": 2}},
        "required": ["a"],
        "additionalProperties": False,
    }


def test_decorator_forms() -> None:
    bare = tool(add)
    configured = tool(name="plus", description="Adds.", timeout_s=3)(add)
    assert bare.name == "add" and bare.timeout_s == 30.0
    assert configured.name == "plus" and configured.desc == "Adds." and configured.timeout_s == 3
    assert guard(configured) is configured


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({}, "a: Field required"),
        ({"a": 1, "c": 2}, "c: Extra inputs are not permitted"),
        ({"a": "many"}, "a: Input should be a valid integer"),
    ],
)
def test_arguments_are_validated_before_the_function_runs(kwargs: dict[str, Any], problem: str) -> None:
    calls: list[int] = []

    def record(a: int, b: int = 2) -> int:
        """Records."""
        calls.append(a)
        return a

    with pytest.raises(ToolArgumentError, match="invalid arguments for record") as info:
        guard(record)(**kwargs)
    assert problem in str(info.value)
    assert calls == []
    assert info.value.code == "tool_invalid_arguments"


class Point(BaseModel):
    x: int
    y: int


def test_nested_models_and_awkward_argument_names() -> None:
    def place(point: Point, json: str = "label") -> str:
        """Place a point."""
        return f"{json}@{point.x},{point.y}"

    t = guard(place)
    assert t(point={"x": "1", "y": 2}) == "label@1,2"
    assert t(point={"x": 1, "y": 2}, json="p") == "p@1,2"
    with pytest.raises(ToolArgumentError, match=r"point\.y: Field required"):
        t(point={"x": 1})


def test_kwargs_tools_accept_extra_arguments() -> None:
    def anything(**kwargs: Any) -> str:
        """Anything."""
        return ",".join(sorted(kwargs))

    assert guard(anything)(b=1, a=2) == "a,b"


def test_schema_only_tools_are_validated_with_their_json_schema() -> None:
    # The shape of MCP/LangChain tools: an untyped **kwargs function with an explicit schema.
    def remote(**kwargs: Any) -> str:
        return f"ok {kwargs}"

    source = dspy.Tool(
        remote, name="remote", desc="Remote.", args={"n": {"type": "integer"}}, arg_types={"n": Any}
    )
    t = GuardedTool.from_tool(source, timeout_s=5)
    assert t(n=3) == "ok {'n': 3}"
    with pytest.raises(ToolArgumentError, match="n: 'x' is not of type 'integer'"):
        t(n="x")


@pytest.mark.parametrize(
    ("name", "match"),
    [("finish", "reserved"), ("submit", "reserved"), ("not valid", "not a valid identifier")],
)
def test_bad_names_are_config_errors(name: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        GuardedTool(add, name=name)


def test_star_args_and_bad_timeouts_are_config_errors() -> None:
    def star(*values: int) -> int:
        """Sum."""
        return sum(values)

    with pytest.raises(ConfigError, match=r"\*args"):
        guard(star)
    with pytest.raises(ConfigError, match="timeout_s"):
        GuardedTool(add, timeout_s=0)
    with pytest.raises(ConfigError, match=r"functions or dspy\.Tool"):
        guard(42)  # type: ignore[arg-type]


def test_errors_are_scrubbed_and_typed() -> None:
    def leaky(q: str) -> str:
        """Leaks."""
        raise RuntimeError(f"db password=hunter2 while reading /srv/app/{q}.db")

    with pytest.raises(ToolError) as info:
        guard(leaky)(q="orders")
    message = str(info.value)
    assert message == "leaky failed: RuntimeError: db password=[REDACTED] while reading [path]"
    # The original exception is not chained, so tracebacks on spans cannot leak it either.
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_tool_errors_raised_by_the_function_pass_through() -> None:
    def picky(q: str) -> str:
        """Picky."""
        raise ToolError("no such order; try an order number like A-17")

    with pytest.raises(ToolError, match="no such order"):
        guard(picky)(q="x")


def test_sync_tool_times_out(release: threading.Event) -> None:
    def hang(q: str) -> str:
        """Hangs."""
        release.wait(10)
        return "late"

    t = guard(hang, timeout_s=0.1)
    started = time.perf_counter()
    with pytest.raises(ToolTimeoutError, match=r"hang did not return within 0.1 s"):
        t(q="x")
    assert time.perf_counter() - started < 1.5

    async def via_acall() -> None:
        with pytest.raises(ToolTimeoutError):
            await t.acall(q="x")

    started = time.perf_counter()
    asyncio.run(via_acall())
    assert time.perf_counter() - started < 1.5


def test_async_tool_times_out_and_is_cancelled() -> None:
    cancelled: list[bool] = []

    async def ahang(q: str) -> str:
        """Hangs asynchronously."""
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise
        return "late"

    t = guard(ahang, timeout_s=0.1)
    started = time.perf_counter()
    with pytest.raises(ToolTimeoutError):
        t(q="x")  # sync call of an async tool: runs on its own loop in a worker thread
    with pytest.raises(ToolTimeoutError):
        asyncio.run(t.acall(q="x"))
    assert time.perf_counter() - started < 3
    assert cancelled == [True, True]


def test_async_tools_work_from_sync_code_and_sync_tools_from_async_code() -> None:
    async def double(n: int) -> int:
        """Doubles."""
        await asyncio.sleep(0)
        return 2 * n

    assert guard(double)(n=2) == 4
    assert asyncio.run(guard(add).acall(a=1, b=1)) == 2
    assert asyncio.run(guard(double).acall(n=3)) == 6


def test_the_run_deadline_caps_tool_calls(release: threading.Event) -> None:
    def hang(q: str) -> str:
        """Hangs."""
        release.wait(10)
        return "late"

    t = guard(hang, timeout_s=30)
    assert remaining_seconds() is None
    with run_deadline(time.monotonic() + 0.1):
        left = remaining_seconds()
        assert left is not None and 0 < left <= 0.1
        with pytest.raises(BudgetExceededError, match="time budget ran out while hang was running"):
            t(q="x")
    with (
        run_deadline(time.monotonic() - 1),
        pytest.raises(BudgetExceededError, match="before hang could run"),
    ):
        t(q="x")
    assert remaining_seconds() is None


def test_callbacks_see_every_call_and_its_failure(release: threading.Event) -> None:
    def hang(q: str) -> str:
        """Hangs."""
        release.wait(10)
        return "late"

    events = ToolEvents()
    with dspy.context(callbacks=[events]):
        guard(add)(a=1)
        with pytest.raises(ToolArgumentError):
            guard(add)(a="x")
        with pytest.raises(ToolTimeoutError):
            guard(hang, timeout_s=0.1)(q="x")
    assert [name for name, _ in events.started] == ["add", "add", "hang"]
    assert events.started[0][1] == {"kwargs": {"a": 1}}
    assert events.ended[0] is None
    assert isinstance(events.ended[1], ToolArgumentError)
    assert isinstance(events.ended[2], ToolTimeoutError)


def test_worker_threads_see_the_callers_dspy_context() -> None:
    lm = ScriptedLM([])

    def which_lm(q: str) -> str:
        """Which LM is configured."""
        return "scripted" if dspy.settings.lm is lm else "other"

    with dspy.context(lm=lm):
        assert guard(which_lm, timeout_s=5)(q="x") == "scripted"


# -- search tool ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class FakePassage:
    id: str
    text: str
    score: float
    metadata: Mapping[str, Any] = field(default_factory=dict)


class FakeRetriever(dspy.Module):
    """A typed fake of geode.retrieval.Retriever: keyword overlap over a fixed corpus."""

    def __init__(self, corpus: dict[str, str]) -> None:
        super().__init__()
        self.corpus = corpus
        self.queries: list[tuple[str, int]] = []

    def forward(self, query: str, k: int = 3) -> dspy.Prediction:
        self.queries.append((query, k))
        words = set(query.lower().split())
        scored = [
            FakePassage(pid, text, float(len(words & set(text.lower().split()))))
            for pid, text in self.corpus.items()
        ]
        hits = sorted((p for p in scored if p.score > 0), key=lambda p: -p.score)[:k]
        return dspy.Prediction(passages=hits)


def test_search_tool_formats_passages() -> None:
    retriever = FakeRetriever(
        {"d1": "refunds take five days", "d2": "shipping is free", "d3": "refunds need a receipt"}
    )
    search = search_tool(retriever, k=2)
    assert search.name == "search"
    assert search.args_schema["required"] == ["query"]
    out = search(query="refunds")
    assert out.splitlines()[0].startswith("[1] (d")
    assert "[2]" in out and "shipping" not in out
    assert retriever.queries == [("refunds", 2)]
    assert search(query="weather") == "No passages found."


def test_search_tool_cuts_long_passages_and_checks_the_result_shape() -> None:
    search = search_tool(FakeRetriever({"d1": "long " * 500}), max_chars_per_passage=20)
    assert len(search(query="long")) < 60

    class Broken(dspy.Module):
        def forward(self, query: str, k: int = 3) -> dspy.Prediction:
            return dspy.Prediction(documents=["x"])

    with pytest.raises(ToolError, match="no `passages` field"):
        search_tool(Broken())(query="x")
    with pytest.raises(ConfigError, match="k must be at least 1"):
        search_tool(Broken(), k=0)


def test_search_tool_can_leave_passage_ids_out() -> None:
    retriever = FakeRetriever({"d1": "refunds take 14 days", "d2": "refunds need a receipt"})
    shown = search_tool(retriever, k=2)(query="refunds")
    bare = search_tool(retriever, k=2, passage_ids=False)(query="refunds")
    assert "(d1)" in shown
    assert "(d1)" not in bare and "(d2)" not in bare
    assert bare.startswith("[1] ") and "\n\n[2] " in bare
