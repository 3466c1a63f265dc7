"""A scripted language model for tests: DSPy's ``DummyLM`` with usage, call records and thread safety."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dspy
from dspy.clients.engines.dummy_engine import AsyncDummyEngine, DummyEngine
from dspy.lm15 import Message, Response, TextPart, Usage
from dspy.utils.dummies import DummyLM

__all__ = [
    "ScriptExhaustedError",
    "ScriptedCall",
    "ScriptedLM",
    "isolated_response_cache",
    "response_cache_dir",
]

Answer = Mapping[str, Any]
AnswerFn = Callable[[list[dict[str, str]]], Answer]


class ScriptExhaustedError(RuntimeError):
    """The script has no answer left for a call; the test scripted fewer turns than the program made."""


@dataclass(frozen=True)
class ScriptedCall:
    """One call the program made: its messages, the script's answer fields and the LM's settings.

    ``lm_kwargs`` are the settings of the LM (copy) that answered, e.g. ``{"temperature": 0.7}`` when the
    program ran on ``lm.copy(temperature=0.7)``.
    """

    messages: list[dict[str, str]]
    answer: dict[str, Any]
    prompt_tokens: int
    completion_tokens: int
    lm_kwargs: dict[str, Any] = field(default_factory=dict[str, Any])


def _count_tokens(text: str) -> int:
    # Whitespace words stand in for tokens: deterministic, and close enough for usage plumbing tests.
    return len(text.split())


class _ScriptedEngine(DummyEngine):
    owner: ScriptedLM

    def _complete_messages(self, messages: list[dict[str, str]]) -> Response:
        answer = self.owner.next_answer(messages)
        output = self.owner._format_answer_fields(dict(answer)) or ""
        prompt_tokens = sum(_count_tokens(m.get("content") or "") for m in messages)
        completion_tokens = _count_tokens(output)
        settings = dict(self.owner.kwargs)
        self.owner.record(ScriptedCall(messages, dict(answer), prompt_tokens, completion_tokens, settings))
        return Response(
            id=None,
            model=self.owner.model,
            message=Message.assistant([TextPart(output)]),
            finish_reason="stop",
            usage=Usage(input_tokens=prompt_tokens, output_tokens=completion_tokens),
        )


class ScriptedLM(DummyLM):
    """A typed fake LM that answers from a script, for unit tests.

    Args:
        answers: Either a sequence of field dicts (answered in order), a mapping from a substring of the
            last message to a field dict, or a function of the messages returning a field dict.
        adapter: The adapter whose output format to mimic; must match the adapter the program uses
            (default ``dspy.ChatAdapter``; ``geode.SmallModelAdapter`` for a ``local=True`` LM under the
            runtime, which picks that adapter for it).
        model: The model name reported on spans and usage.
        strict: Raise :class:`ScriptExhaustedError` when the script runs out (default), instead of
            answering ``"No more responses"`` as ``DummyLM`` does.
        local: Declare what ``geode.LocalLM`` declares: a small local model (``small_local_model``, so
            the runtime pairs it with ``SmallModelAdapter``) that accepts a response schema. The script
            is not constrained by the schema; record it with a callback's ``on_lm_start``.
        cache: Answer a repeated identical call from DSPy's response cache, as a real LM does by
            default (``DummyLM`` never caches); for tests of what cache hits do to measurements.

    Example:
        >>> import dspy
        >>> from geode.testing import ScriptedLM
        >>> lm = ScriptedLM([{"answer": "4"}])
        >>> with dspy.context(lm=lm):
        ...     dspy.Predict("question -> answer")(question="2+2?").answer
        '4'
    """

    __test__ = False

    def __init__(
        self,
        answers: Sequence[Answer] | Mapping[str, Answer] | AnswerFn,
        *,
        adapter: dspy.Adapter | None = None,
        model: str = "scripted",
        strict: bool = True,
        local: bool = False,
        cache: bool = False,
    ) -> None:
        super().__init__([], adapter=adapter)
        self.model = model
        self._cache_responses = cache
        self.strict = strict
        self.local = local
        self.calls: list[ScriptedCall] = []
        self._lock = threading.Lock()
        self._fn: AnswerFn | None = None
        self._keyed: Mapping[str, Answer] | None = None
        self._queue: Iterator[Answer] | None = None
        if callable(answers):
            self._fn = answers
        elif isinstance(answers, Mapping):
            self._keyed = answers
        else:
            self._queue = iter(list(answers))
        self._install_engine()

    @property
    def small_local_model(self) -> bool:
        """``True`` for ``local=True``: read by the runtime and ``geode.Agent`` as on ``geode.LocalLM``."""
        return self.local

    @property
    def supports_response_schema(self) -> bool:
        """A ``local=True`` LM accepts a response schema, as ``geode.LocalLM`` does."""
        return self.local

    @property
    def supported_params(self) -> set[str]:
        """With ``local=True``: ``response_format`` among the usual sampling settings."""
        return {"response_format", "temperature", "max_tokens", "stop"} if self.local else set()

    def _install_engine(self) -> None:
        engine = _ScriptedEngine(self)
        self._engine_spec = engine
        self._async_engine_spec = AsyncDummyEngine(engine)

    def copy(self, **kwargs: Any) -> ScriptedLM:
        """Copy with overrides; the copy shares the script and call log (as DSPy copies LMs per call)."""
        copied = super().copy(**kwargs)
        copied._install_engine()
        return copied

    def next_answer(self, messages: list[dict[str, str]]) -> Answer:
        """The script's answer for these messages."""
        if self._fn is not None:
            return self._fn(messages)
        if self._keyed is not None:
            last = messages[-1].get("content") or ""
            for key, answer in self._keyed.items():
                if key in last:
                    return answer
            if self.strict:
                raise ScriptExhaustedError(f"no scripted answer matches the last message: {last[:200]!r}")
            return {"answer": "No more responses"}
        with self._lock:
            assert self._queue is not None
            try:
                return next(self._queue)
            except StopIteration:
                if self.strict:
                    raise ScriptExhaustedError(
                        f"the script ran out after {len(self.calls)} calls; script more answers"
                    ) from None
                return {"answer": "No more responses"}

    def record(self, call: ScriptedCall) -> None:
        """Append a call to :attr:`calls` (thread-safe)."""
        with self._lock:
            self.calls.append(call)


@contextmanager
def isolated_response_cache(folder: Path) -> Iterator[Path]:
    """DSPy's response cache in ``folder`` for the block, then the process's previous cache again.

    Tests of caching must neither read answers cached by other runs nor leave theirs in
    ``~/.dspy_cache``.
    """
    # dspy.cache is resolved lazily by DSPy's module __getattr__; pyright does not know it.
    saved = getattr(dspy, "cache")  # noqa: B009
    dspy.configure_cache(disk_cache_dir=str(folder))
    try:
        yield folder
    finally:
        setattr(dspy, "cache", saved)  # noqa: B010


def response_cache_dir() -> Path:
    """The folder of DSPy's current disk cache (``dspy.cache``)."""
    return Path(str(getattr(dspy, "cache").disk_cache.directory))  # noqa: B009
