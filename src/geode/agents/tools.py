"""Tools for agents: plain typed Python functions, validated and time-limited when called.

A tool is any typed function; its docstring is the description the model reads. :class:`GuardedTool`
wraps one as a ``dspy.Tool`` (so DSPy callbacks, and therefore TOOL spans, see every call) and adds
what a production agent needs around it:

- arguments are validated against the tool's schema *before* the function runs, constraints declared
  with ``Annotated`` included (``Annotated[str, StringConstraints(pattern=...)]``, ``Field(ge=0)``);
- every call has a timeout (sync and async tools alike), capped by the run's deadline;
- an exception from the function is re-raised as :class:`~geode.errors.ToolError` with a message
  scrubbed of secrets and file paths, so the span and the model see the same safe text.

Example:
    >>> from geode.agents.tools import tool
    >>> @tool(timeout_s=2)
    ... def lookup_stock(item: str) -> int:
    ...     '''How many units of an item are in stock.'''
    ...     return {"widget": 3}.get(item, 0)
    >>> lookup_stock(item="widget")
    3
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import inspect
import threading
import time
import typing
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Protocol, overload, runtime_checkable

import dspy
import jsonschema
import pydantic
from dspy.utils.callback import with_callbacks
from pydantic import ConfigDict, PrivateAttr, create_model

from geode.agents.scrub import scrub
from geode.errors import BudgetExceededError, ConfigError, ToolArgumentError, ToolError, ToolTimeoutError

__all__ = [
    "DEFAULT_TOOL_TIMEOUT_S",
    "GuardedTool",
    "Passage",
    "PassageSource",
    "ToolArgumentError",
    "guard",
    "remaining_seconds",
    "run_deadline",
    "search_tool",
    "tool",
]

DEFAULT_TOOL_TIMEOUT_S = 30.0
RESERVED_TOOL_NAMES = frozenset({"finish", "submit"})
"""Pseudo-tools of DSPy's ReAct loops; a real tool may not take these names."""


# -- the run's deadline ----------------------------------------------------------------------------

_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("geode_run_deadline", default=None)


@contextmanager
def run_deadline(deadline: float | None) -> Iterator[None]:
    """Cap every tool call in this block at ``deadline`` (a ``time.monotonic()`` value).

    Agents set it from their time budget; a tool call that would run past it is abandoned and raises
    :class:`~geode.errors.BudgetExceededError`.
    """
    token = _DEADLINE.set(deadline)
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def remaining_seconds() -> float | None:
    """Seconds left before the current run's deadline, or ``None`` when there is none."""
    deadline = _DEADLINE.get()
    return None if deadline is None else deadline - time.monotonic()


class _Expired(Exception):
    """Internal: the wait for a tool ended at its timeout."""


def start_worker(fn: Callable[[], Any], name: str) -> concurrent.futures.Future[Any]:
    """Run ``fn`` in a new daemon thread with the caller's context; its result arrives in the future."""
    # A daemon thread per call, not a pool: a hung tool cannot be killed, and a pool's worker threads
    # would hold interpreter exit (and asyncio.run's executor shutdown) hostage until it returns.
    future: concurrent.futures.Future[Any] = concurrent.futures.Future()
    context = contextvars.copy_context()  # DSPy settings and the OTel span context follow the call

    def target() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(context.run(fn))
        except BaseException as err:
            future.set_exception(err)

    threading.Thread(target=target, name=f"geode-tool-{name}", daemon=True).start()
    return future


def _call_to_completion(func: Callable[..., Any], kwargs: Mapping[str, Any], timeout: float | None) -> Any:
    result = func(**kwargs)
    if inspect.isawaitable(result):
        # An async tool called from sync code runs on its own loop in this worker thread, where it
        # can be cancelled cleanly at the timeout.
        return asyncio.run(_await_with_timeout(result, timeout))
    return result


async def _await_with_timeout(awaitable: Awaitable[Any], timeout: float | None) -> Any:
    if timeout is None:
        return await awaitable
    try:
        return await asyncio.wait_for(awaitable, timeout)
    except TimeoutError:
        raise _Expired from None


def _run_sync(func: Callable[..., Any], kwargs: Mapping[str, Any], timeout: float | None, name: str) -> Any:
    if timeout is None and not inspect.iscoroutinefunction(func):
        return _call_to_completion(func, kwargs, None)
    future = start_worker(lambda: _call_to_completion(func, kwargs, timeout), name)
    try:
        # The grace second lets an async tool's own wait_for fire first and cancel it cleanly.
        return future.result(None if timeout is None else timeout + (1.0 if _is_async(func) else 0.0))
    except concurrent.futures.TimeoutError:
        if not future.done():
            raise _Expired from None
        raise


async def _run_async(
    func: Callable[..., Any], kwargs: Mapping[str, Any], timeout: float | None, name: str
) -> Any:
    if _is_async(func):
        return await _await_with_timeout(func(**kwargs), timeout)
    # A sync tool must not block the event loop; it runs in a worker thread that is abandoned at
    # the timeout (Python cannot stop a thread).
    future = start_worker(lambda: _call_to_completion(func, kwargs, timeout), name)
    return await _await_with_timeout(asyncio.wrap_future(future), timeout)


def _is_async(func: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(type(func).__call__)


# -- the tool --------------------------------------------------------------------------------------


class GuardedTool(dspy.Tool):
    """A ``dspy.Tool`` that validates its arguments, enforces a timeout and scrubs its errors.

    Calls go through ``dspy.Tool.__call__``/``acall`` semantics (DSPy callbacks fire, so the
    runtime records a TOOL span), and every failure is raised *inside* the call, where the span
    records it:

    - :class:`ToolArgumentError`: the arguments do not match the schema (the function did not run);
    - :class:`~geode.errors.ToolTimeoutError`: the function did not return within ``timeout_s``;
    - :class:`~geode.errors.BudgetExceededError`: the agent run's deadline came first;
    - :class:`~geode.errors.ToolError`: the function raised; the message is scrubbed of secrets
      and file paths.

    Args:
        func: A function with type hints; its docstring is the description.
        name: Defaults to the function's name.
        desc: Defaults to the docstring.
        timeout_s: Seconds a call may take; ``None`` for no limit (not recommended).
        args: JSON schema per argument; inferred from the type hints by default.
        arg_types: Python type per argument; inferred by default.
        arg_desc: Description per argument.
    """

    timeout_s: float | None = DEFAULT_TOOL_TIMEOUT_S
    _args_model: type[pydantic.BaseModel] = PrivateAttr()
    _untyped_args: frozenset[str] = PrivateAttr(default=frozenset())

    def __init__(
        self,
        func: Callable[..., Any],
        name: str | None = None,
        desc: str | None = None,
        args: dict[str, Any] | None = None,
        arg_types: dict[str, Any] | None = None,
        arg_desc: dict[str, str] | None = None,
        *,
        timeout_s: float | None = DEFAULT_TOOL_TIMEOUT_S,
    ) -> None:
        super().__init__(func=func, name=name, desc=desc, args=args, arg_types=arg_types, arg_desc=arg_desc)
        if args is None:
            # dspy.Tool lists a `**kwargs` parameter as an argument named "kwargs"; it is not one.
            for var_keyword in _var_keyword_names(func):
                (self.args or {}).pop(var_keyword, None)
                (self.arg_types or {}).pop(var_keyword, None)
        if timeout_s is not None and timeout_s <= 0:
            raise ConfigError(f"tool {self.name!r}: timeout_s must be positive or None, got {timeout_s}")
        self.timeout_s = timeout_s
        if not self.name or not self.name.isidentifier():
            raise ConfigError(f"tool name {self.name!r} is not a valid identifier", hint="pass name='...'")
        if self.name in RESERVED_TOOL_NAMES:
            raise ConfigError(
                f"tool name {self.name!r} is reserved by the ReAct loop", hint="rename the tool"
            )
        # Docstring indentation would reach the prompt verbatim; one line reads better there.
        self.desc = " ".join(inspect.cleandoc(self.desc or "").split())
        # dspy.Tool reads type hints without their Annotated[...] metadata, so a constraint the tool
        # declares (a pattern, a range, a length) would not be checked; put the full hints back.
        self.arg_types = {**(self.arg_types or {}), **_constrained_hints(func, self.arg_types or {})}
        self._args_model, self._untyped_args = _args_model(self)

    @classmethod
    def from_tool(cls, source: dspy.Tool, *, timeout_s: float | None = DEFAULT_TOOL_TIMEOUT_S) -> GuardedTool:
        """Guard an existing ``dspy.Tool`` (e.g. one converted from MCP or LangChain)."""
        return cls(
            source.func,
            name=source.name,
            desc=source.desc,
            args=dict(source.args or {}),
            arg_types=dict(source.arg_types or {}),
            arg_desc=dict(source.arg_desc or {}),
            timeout_s=timeout_s,
        )

    @property
    def args_schema(self) -> dict[str, Any]:
        """The JSON schema of this tool's arguments object (every property listed, none extra)."""
        properties = {k: dict(v) for k, v in (self.args or {}).items()}
        return {
            "type": "object",
            "properties": properties,
            "required": [k for k, v in properties.items() if "default" not in v],
            "additionalProperties": self.has_kwargs,
        }

    def validate_args(self, **kwargs: Any) -> dict[str, Any]:
        """Check ``kwargs`` against the schema and convert them to the function's parameter types.

        Raises:
            ToolArgumentError: Missing, unknown or ill-typed arguments (the message names each).
        """
        try:
            model = self._args_model.model_validate(kwargs)
        except pydantic.ValidationError as err:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'arguments'}: {e['msg']}" for e in err.errors()
            )
            raise ToolArgumentError(f"invalid arguments for {self.name}: {problems}") from None
        parsed: dict[str, Any] = {}
        for field_name, info in type(model).model_fields.items():
            parsed[info.alias or field_name] = getattr(model, field_name)
        parsed.update(model.model_extra or {})
        for key in self._untyped_args & kwargs.keys():
            schema = (self.args or {}).get(key, {})
            if schema.get("type"):
                try:
                    jsonschema.validate(instance=kwargs[key], schema=schema)
                except jsonschema.ValidationError as err:
                    raise ToolArgumentError(
                        f"invalid arguments for {self.name}: {key}: {err.message}"
                    ) from None
        # Pass only what the caller gave: omitted arguments keep the function's own defaults.
        return {k: v for k, v in parsed.items() if k in kwargs}

    def _validate_and_parse_args(self, **kwargs: Any) -> dict[str, Any]:
        return self.validate_args(**kwargs)

    def _timeout(self) -> tuple[float | None, bool]:
        """The effective timeout and whether the run's deadline (not the tool's own limit) sets it."""
        left = remaining_seconds()
        if left is None:
            return self.timeout_s, False
        if left <= 0:
            raise BudgetExceededError(f"the run's time budget ran out before {self.name} could run")
        if self.timeout_s is None or left < self.timeout_s:
            return left, True
        return self.timeout_s, False

    def _failure(self, err: Exception, timeout: float | None, by_deadline: bool) -> Exception:
        if isinstance(err, _Expired):
            if by_deadline:
                return BudgetExceededError(f"the run's time budget ran out while {self.name} was running")
            return ToolTimeoutError(f"{self.name} did not return within {timeout:g} s")
        if isinstance(err, ToolError | BudgetExceededError):
            return err
        return ToolError(f"{self.name} failed: {scrub(f'{type(err).__name__}: {err}')}")

    @with_callbacks
    def __call__(self, **kwargs: Any) -> Any:
        """Validate ``kwargs``, then run the tool within its timeout (see the class docstring)."""
        parsed = self.validate_args(**kwargs)
        timeout, by_deadline = self._timeout()
        try:
            return _run_sync(self.func, parsed, timeout, self.name or "tool")
        except Exception as err:
            failure = self._failure(err, timeout, by_deadline)
            if failure is err:
                raise
            raise failure from None

    @with_callbacks
    async def acall(self, **kwargs: Any) -> Any:
        """Async :meth:`__call__`: async tools are awaited, sync ones run in a worker thread."""
        parsed = self.validate_args(**kwargs)
        timeout, by_deadline = self._timeout()
        try:
            return await _run_async(self.func, parsed, timeout, self.name or "tool")
        except Exception as err:
            failure = self._failure(err, timeout, by_deadline)
            if failure is err:
                raise
            raise failure from None


def _signature_target(func: Callable[..., Any]) -> Callable[..., Any]:
    return func if inspect.isfunction(func) or inspect.ismethod(func) else type(func).__call__


def _var_keyword_names(func: Callable[..., Any]) -> list[str]:
    try:
        parameters = inspect.signature(_signature_target(func)).parameters
    except (TypeError, ValueError):
        return []
    return [p.name for p in parameters.values() if p.kind is inspect.Parameter.VAR_KEYWORD]


def _constrained_hints(func: Callable[..., Any], arg_types: Mapping[str, Any]) -> dict[str, Any]:
    """The ``Annotated[T, ...]`` hints of ``func``'s parameters whose type in ``arg_types`` is the bare ``T``."""
    try:
        hints = typing.get_type_hints(_signature_target(func), include_extras=True)
    except Exception:  # unresolvable forward references: dspy.Tool's own hints stand
        return {}
    return {
        name: hint
        for name, hint in hints.items()
        if name in arg_types
        and typing.get_origin(hint) is typing.Annotated
        and typing.get_args(hint)[0] == arg_types[name]
    }


def _args_model(tool: dspy.Tool) -> tuple[type[pydantic.BaseModel], frozenset[str]]:
    """A pydantic model of the tool's arguments, used to validate and convert them before a call."""
    try:
        parameters = inspect.signature(_signature_target(tool.func)).parameters
    except (TypeError, ValueError):
        parameters = {}
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in parameters.values()):
        raise ConfigError(f"tool {tool.name!r} takes *args; tools take named parameters only")
    fields: dict[str, Any] = {}
    untyped: set[str] = set()
    arg_types = tool.arg_types or {}
    for index, (arg, schema) in enumerate((tool.args or {}).items()):
        annotation = arg_types.get(arg, Any)
        if annotation is Any:
            untyped.add(arg)
        param = parameters.get(arg)
        if param is not None and param.default is not inspect.Parameter.empty:
            default = param.default
        else:
            default = schema.get("default", ...)
        # Positional field names with aliases: an argument may be called `json` or `schema`, which
        # would shadow BaseModel attributes.
        fields[f"arg_{index}"] = (annotation, pydantic.Field(default, alias=arg))
    model = create_model(
        f"{tool.name}_arguments",
        __config__=ConfigDict(extra="allow" if tool.has_kwargs else "forbid", arbitrary_types_allowed=True),
        **fields,
    )
    return model, frozenset(untyped)


ToolLike = Callable[..., Any] | dspy.Tool


def guard(source: ToolLike, *, timeout_s: float | None = DEFAULT_TOOL_TIMEOUT_S) -> GuardedTool:
    """Turn a function or ``dspy.Tool`` into a :class:`GuardedTool` (a ``GuardedTool`` is kept as is)."""
    if isinstance(source, GuardedTool):
        return source
    if isinstance(source, dspy.Tool):
        return GuardedTool.from_tool(source, timeout_s=timeout_s)
    if not callable(source):
        raise ConfigError(f"tools must be functions or dspy.Tool objects, got {type(source).__name__}")
    return GuardedTool(source, timeout_s=timeout_s)


@overload
def tool(func: Callable[..., Any], /) -> GuardedTool: ...
@overload
def tool(
    *,
    name: str | None = None,
    description: str | None = None,
    timeout_s: float | None = DEFAULT_TOOL_TIMEOUT_S,
) -> Callable[[Callable[..., Any]], GuardedTool]: ...
def tool(
    func: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    timeout_s: float | None = DEFAULT_TOOL_TIMEOUT_S,
) -> GuardedTool | Callable[[Callable[..., Any]], GuardedTool]:
    """Make a typed function a tool; use bare (``@tool``) or with options (``@tool(timeout_s=5)``).

    Plain functions passed to :class:`~geode.agents.agent.Agent` become tools with the default
    timeout; the decorator is for a different name, description or timeout.

    Args:
        func: The function (when used as a bare decorator).
        name: Tool name the model uses; default the function's name.
        description: What the model reads; default the docstring.
        timeout_s: Seconds a call may take (default 30); ``None`` for no limit.
    """

    def wrap(f: Callable[..., Any]) -> GuardedTool:
        return GuardedTool(f, name=name, desc=description, timeout_s=timeout_s)

    return wrap(func) if func is not None else wrap


# -- retrieval search tool -------------------------------------------------------------------------


@runtime_checkable
class Passage(Protocol):
    """A retrieved passage, as ``geode.retrieval`` returns them."""

    @property
    def id(self) -> str:
        """Stable id of the passage (its point id in the store)."""
        ...

    @property
    def text(self) -> str:
        """The passage's text."""
        ...

    @property
    def score(self) -> float:
        """Similarity to the query; higher is closer."""
        ...

    @property
    def metadata(self) -> Mapping[str, Any]:
        """Payload stored with the passage (source, title, ...)."""
        ...


class PassageSource(Protocol):
    """Anything called as ``source(query=..., k=...)`` returning an object with ``.passages``.

    ``geode.retrieval.Retriever`` (a ``dspy.Module``, so the call is traced as a RETRIEVER span) is
    the intended one.
    """

    def __call__(self, *, query: str, k: int) -> Any:
        """The ``k`` passages nearest to ``query``, as ``Prediction(passages=[...])``."""
        ...


def passages_of(result: Any) -> Sequence[Passage]:
    """The passages in a retriever's result, checked for shape."""
    passages = getattr(result, "passages", None)
    if passages is None:
        raise ToolError("the retriever returned no `passages` field; expected Prediction(passages=[...])")
    found = list(passages)
    for passage in found:
        if not isinstance(passage, Passage):
            raise ToolError(
                f"the retriever returned a {type(passage).__name__}, not a passage with id/text/score"
            )
    return found


def search_tool(
    retriever: PassageSource,
    *,
    k: int = 3,
    name: str = "search",
    description: str | None = None,
    max_chars_per_passage: int = 800,
    timeout_s: float | None = 10.0,
    passage_ids: bool = True,
) -> GuardedTool:
    """A tool that searches a retriever and returns the top passages as numbered text.

    Args:
        retriever: A ``geode.retrieval.Retriever`` or anything with its call shape.
        k: How many passages to return.
        name: Tool name the model uses.
        description: What the model reads; a sensible default is given.
        max_chars_per_passage: Longer passages are cut, so one document cannot flood the context.
        timeout_s: Seconds a search may take.
        passage_ids: Show each passage's id after its rank (``[1] (id) text``), so a model can cite
            it. Off, a passage is ``[1] text``: a small model has no use for a UUID, reads it as
            tokens of noise and copies its digits into numeric answers.
    """
    if k < 1:
        raise ConfigError(f"search_tool: k must be at least 1, got {k}")

    def search(query: str) -> str:
        result = retriever(query=query, k=k)
        passages = passages_of(result)
        if not passages:
            return "No passages found."
        parts = []
        for rank, passage in enumerate(passages, start=1):
            text = passage.text.strip()
            if len(text) > max_chars_per_passage:
                text = text[:max_chars_per_passage].rstrip() + " ..."
            parts.append(f"[{rank}] ({passage.id}) {text}" if passage_ids else f"[{rank}] {text}")
        return "\n\n".join(parts)

    return GuardedTool(
        search,
        name=name,
        desc=description or f"Search the knowledge base; returns the {k} most relevant passages for a query.",
        arg_desc={"query": "What to search for, in a few words."},
        timeout_s=timeout_s,
    )
