"""The memoized DSPy dispatch helpers answer exactly as DSPy's own do."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterator
from typing import Any

import dspy
import pytest
from dspy.utils.callback import BaseCallback

from geode.runtime.instrumentation import _dispatch
from geode.testing import ScriptedLM

callback_module = importlib.import_module("dspy.utils.callback")


def _wrapped(method: Any) -> Callable[..., Any]:
    return method.__wrapped__


CASES: list[tuple[str, Any, Callable[..., Any], tuple[Any, ...], dict[str, Any]]] = [
    ("module call", dspy.Predict("q -> a"), _wrapped(dspy.Module.__call__), (), {"q": "x"}),
    ("module call, positional", dspy.Predict("q -> a"), _wrapped(dspy.Module.__call__), ("pos",), {}),
    ("module acall", dspy.Predict("q -> a"), _wrapped(dspy.Module.acall), (), {"q": "x"}),
    ("lm call", ScriptedLM([]), _wrapped(dspy.BaseLM.__call__), ("prompt",), {"temperature": 0.1}),
    ("lm messages", ScriptedLM([]), _wrapped(dspy.BaseLM.__call__), (), {"messages": [{"role": "user"}]}),
    ("lm acall", ScriptedLM([]), _wrapped(dspy.BaseLM.acall), (), {"messages": []}),
    (
        "adapter format",
        dspy.ChatAdapter(),
        _wrapped(dspy.ChatAdapter.format),
        (dspy.Signature("q -> a"), [], {"q": "x"}),  # pyright: ignore[reportCallIssue]
        {},
    ),
    ("tool call", dspy.Tool(lambda city: city, name="t"), _wrapped(dspy.Tool.__call__), (), {"city": "x"}),
    (
        "evaluate",
        dspy.Evaluate(devset=[], metric=None),
        _wrapped(dspy.Evaluate.__call__),
        (dspy.Predict("q -> a"),),
        {},
    ),
]


@pytest.fixture
def originals() -> Iterator[dict[str, Any]]:
    saved = {
        "getcallargs": inspect.getcallargs,
        "start": callback_module._get_on_start_handler,
        "end": callback_module._get_on_end_handler,
    }
    _dispatch.install()
    try:
        yield saved
    finally:
        _dispatch.uninstall()


@pytest.mark.parametrize(("case", "instance", "fn", "args", "kwargs"), CASES, ids=[c[0] for c in CASES])
def test_memoized_helpers_match_dspy(
    originals: dict[str, Any],
    case: str,
    instance: Any,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> None:
    callback = BaseCallback()
    for _ in range(2):  # cold, then memoized
        expected = originals["getcallargs"](fn, instance, *args, **kwargs)
        assert callback_module.inspect.getcallargs(fn, instance, *args, **kwargs) == expected
        assert callback_module._get_on_start_handler(callback, instance, fn) == originals["start"](
            callback, instance, fn
        )
        assert callback_module._get_on_end_handler(callback, instance, fn) == originals["end"](
            callback, instance, fn
        )


def test_bad_arguments_still_raise_type_error(originals: dict[str, Any]) -> None:
    lm = ScriptedLM([])
    fn = _wrapped(dspy.BaseLM.__call__)
    with pytest.raises(TypeError):
        originals["getcallargs"](fn, lm, "a", "b")
    with pytest.raises(TypeError):
        callback_module.inspect.getcallargs(fn, lm, "a", "b")


def test_unsupported_adapter_method_raises_dspy_error(originals: dict[str, Any]) -> None:
    def other(self: Any) -> None:
        pass

    with pytest.raises(ValueError, match="Unsupported adapter method"):
        callback_module._get_on_start_handler(BaseCallback(), dspy.ChatAdapter(), other)


def test_uninstall_restores_dspy() -> None:
    before = (
        callback_module.inspect,
        callback_module.uuid,
        callback_module._get_on_start_handler,
        callback_module._get_on_end_handler,
    )
    _dispatch.install()
    _dispatch.install()
    assert _dispatch.installed()
    assert callback_module.inspect is not inspect
    assert callback_module.uuid.uuid4 is _dispatch.uuid4
    _dispatch.uninstall()
    _dispatch.uninstall()
    after = (
        callback_module.inspect,
        callback_module.uuid,
        callback_module._get_on_start_handler,
        callback_module._get_on_end_handler,
    )
    assert after == before
    assert not _dispatch.installed()


def _plain(self: Any, a: Any, b: Any = 2, *rest: Any, c: Any, d: Any = 4, **more: Any) -> None: ...


def _strict(self: Any, a: Any, *, c: Any = 3) -> None: ...


def _positional_only(self: Any, a: Any, /, b: Any = 1) -> None: ...


SHAPES: list[tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]] = [
    (_plain, ("s", 1), {"c": 3}),
    (_plain, ("s", 1, 2, 3, 4), {"c": 3, "x": 9}),
    (_plain, ("s",), {"a": 1, "c": 3, "d": 5}),
    (_strict, ("s", 1), {}),
    (_strict, ("s",), {"a": 1, "c": 9}),
    (_positional_only, ("s", 1), {"b": 2}),
]
BAD: list[tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]] = [
    (_plain, ("s", 1), {}),  # c missing
    (_plain, ("s", 1), {"a": 2, "c": 3}),  # a twice
    (_strict, ("s", 1, 2), {}),  # too many positional
    (_strict, ("s", 1), {"unknown": 1}),
]


@pytest.mark.parametrize(("fn", "args", "kwargs"), SHAPES)
def test_binder_matches_getcallargs(
    fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    fast = _dispatch.getcallargs
    for _ in range(2):
        assert fast(fn, *args, **kwargs) == inspect.getcallargs(fn, *args, **kwargs)


@pytest.mark.parametrize(("fn", "args", "kwargs"), BAD)
def test_binder_raises_like_getcallargs(
    fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    fast = _dispatch.getcallargs
    with pytest.raises(TypeError):
        inspect.getcallargs(fn, *args, **kwargs)
    with pytest.raises(TypeError):
        fast(fn, *args, **kwargs)


def test_call_ids_are_unique_32_hex_characters_across_threads() -> None:
    from concurrent.futures import ThreadPoolExecutor

    def ids(_: int) -> list[str]:
        return [_dispatch.uuid4().hex for _ in range(2000)]

    with ThreadPoolExecutor(4) as pool:
        made = [call_id for batch in pool.map(ids, range(4)) for call_id in batch]
    assert len(set(made)) == len(made) == 8000
    assert all(len(call_id) == 32 and int(call_id, 16) >= 0 for call_id in made)


def test_dspy_calls_under_a_callback_get_distinct_ids_from_the_stand_in() -> None:
    seen: list[str] = []

    class Recorder(BaseCallback):
        def on_module_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
            seen.append(call_id)

    _dispatch.install()
    try:
        with dspy.context(lm=ScriptedLM([{"a": "1"}, {"a": "2"}]), callbacks=[Recorder()]):
            program = dspy.Predict("q -> a")
            program(q="x")
            program(q="y")
    finally:
        _dispatch.uninstall()
    assert len(seen) == len(set(seen)) == 2
    assert all(call_id.startswith(_dispatch._prefix) for call_id in seen)
