"""One agent run's state: budgets and deadline, LM calls over the trajectory, step plans and records.

A :class:`_Run` is shared by the agent loop (:class:`~geode.agents.agent.Agent`) and its iteration
modules (:mod:`geode.agents.iteration`) through a context variable, so each iteration, a DSPy module
call of its own, reads and extends the same run.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import dspy
import pydantic
from dspy.signatures.signature import make_signature
from dspy.utils.callback import BaseCallback
from dspy.utils.exceptions import AdapterParseError, ContextWindowExceededError
from dspy.utils.usage_tracker import UsageTracker

from geode.agents.scrub import scrub
from geode.agents.step_schema import FINISH
from geode.agents.steps import AgentStep, StepOutcome, Termination, TerminationReason
from geode.agents.tools import run_deadline, start_worker
from geode.errors import BudgetExceededError, GeodeError

if TYPE_CHECKING:
    from geode.agents.agent import Agent

logger = logging.getLogger(__name__)

T = TypeVar("T")


class _LMCallCounter(BaseCallback):
    """Counts LM calls started inside a run (the budget's ``max_lm_calls``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.count = 0

    def on_lm_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        with self._lock:
            self.count += 1


@dataclass(frozen=True)
class _Plan:
    """What the model asked for in one step, after checking it against the allow-list."""

    kind: str  # "call" | "finish" | "refuse" | "repeat" | "unparsed" | "cut" (stopped by the budget)
    thought: str
    tool: str | None
    args: Mapping[str, Any]
    message: str | None = None
    """For ``refuse``/``unparsed``: the corrective observation the model reads."""


_RUN: contextvars.ContextVar[_Run | None] = contextvars.ContextVar("geode_agent_run", default=None)


class _Run:
    """State of one agent run, shared by the agent loop and its iteration modules."""

    def __init__(self, agent: Agent, inputs: dict[str, Any], max_iters: int) -> None:
        self.agent = agent
        self.inputs = inputs
        self.max_iters = max_iters
        self.budget = agent.budget
        self.started = time.monotonic()
        self.deadline = None if self.budget.max_seconds is None else self.started + self.budget.max_seconds
        self.counter = _LMCallCounter()
        self.trajectory: dict[str, Any] = {}
        self.steps: list[AgentStep] = []
        self.seen_calls: set[str] = set()
        self.parse_failures = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.truncated_steps = 0
        self.end: tuple[TerminationReason, str] | None = None
        self.skip_extraction = False

    @staticmethod
    def current() -> _Run:
        run = _RUN.get()
        if run is None:
            raise RuntimeError("an agent iteration ran outside its agent's run")
        return run

    @contextmanager
    def scope(self) -> Iterator[None]:
        token = _RUN.set(self)
        try:
            with (
                dspy.context(callbacks=[*dspy.settings.callbacks, self.counter]),
                run_deadline(self.deadline),
            ):
                yield
        finally:
            _RUN.reset(token)

    # -- budget --

    @property
    def index(self) -> int:
        return len(self.steps)

    def seconds_left(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()

    def _calls_per_attempt(self) -> int:
        adapter = dspy.settings.adapter
        if adapter is None:
            return 2  # DSPy's default ChatAdapter retries a failed parse in JSON mode
        if isinstance(adapter, dspy.JSONAdapter):
            return 1
        if isinstance(adapter, dspy.ChatAdapter) and adapter.use_json_adapter_fallback:
            return 2
        return 1

    def before_step(self) -> tuple[TerminationReason, str] | None:
        """Why the run must stop before another step, if it must."""
        budget = self.budget
        if self.index >= self.max_iters:
            return TerminationReason.MAX_ITERS, f"max_iters={self.max_iters} reached without {FINISH}"
        left = self.seconds_left()
        if left is not None and left <= 0:
            self.skip_extraction = True
            return TerminationReason.BUDGET, f"max_seconds={budget.max_seconds:g} reached"
        if budget.max_lm_calls is not None:
            needed = 2 * self._calls_per_attempt()  # this step, and the final extraction
            if self.counter.count + needed > budget.max_lm_calls:
                return TerminationReason.BUDGET, f"max_lm_calls={budget.max_lm_calls} reached"
        if budget.max_tokens is not None and self.prompt_tokens + self.completion_tokens >= budget.max_tokens:
            self.skip_extraction = True
            return TerminationReason.BUDGET, f"max_tokens={budget.max_tokens} reached"
        return None

    def can_extract(self) -> bool:
        if self.skip_extraction:
            return False
        left = self.seconds_left()
        if left is not None and left <= 0:
            return False
        budget = self.budget
        if (
            budget.max_lm_calls is not None
            and self.counter.count + self._calls_per_attempt() > budget.max_lm_calls
        ):
            return False
        return budget.max_tokens is None or self.prompt_tokens + self.completion_tokens < budget.max_tokens

    # -- LM calls --

    def format_trajectory(self, *, thoughts: bool = True) -> str:
        shown = {
            k: v
            for k, v in self.trajectory.items()
            if int(k.rsplit("_", 1)[1]) >= self.truncated_steps and (thoughts or not k.startswith("thought_"))
        }
        adapter = dspy.settings.adapter or dspy.ChatAdapter()
        signature = make_signature(f"{', '.join(shown)} -> x")
        return adapter.format_user_message_content(signature, shown)

    def _truncate(self) -> bool:
        if self.truncated_steps >= self.index - 1:
            return False
        self.truncated_steps += 1
        return True

    def call_lm(self, call: Callable[[str], T], *, thoughts: bool = True) -> T:
        """Call a predictor with the formatted trajectory, within the deadline, truncating on overflow."""
        for _ in range(3):
            trajectory = self.format_trajectory(thoughts=thoughts)
            try:
                return self._within_deadline(lambda t=trajectory: call(t))
            except ContextWindowExceededError:
                if not self._truncate():
                    raise
        raise ContextWindowExceededError(
            message="the trajectory still overflowed the context window after truncation"
        )

    async def acall_lm(self, call: Callable[[str], Awaitable[T]], *, thoughts: bool = True) -> T:
        """Async :meth:`call_lm`."""
        for _ in range(3):
            trajectory = self.format_trajectory(thoughts=thoughts)
            try:
                left = self.seconds_left()
                if left is None:
                    return await call(trajectory)
                if left <= 0:
                    raise self._out_of_time()
                try:
                    return await asyncio.wait_for(call(trajectory), left)
                except TimeoutError:
                    raise self._out_of_time() from None
            except ContextWindowExceededError:
                if not self._truncate():
                    raise
        raise ContextWindowExceededError(
            message="the trajectory still overflowed the context window after truncation"
        )

    def _within_deadline(self, fn: Callable[[], T]) -> T:
        left = self.seconds_left()
        if left is None:
            return fn()
        if left <= 0:
            raise self._out_of_time()
        # An LM call cannot be interrupted; past the deadline the run stops waiting for it.
        future = start_worker(fn, "lm")
        try:
            return future.result(left)
        except concurrent.futures.TimeoutError:
            if future.done():
                raise
            raise self._out_of_time() from None

    def _out_of_time(self) -> BudgetExceededError:
        return BudgetExceededError(f"the run's time budget (max_seconds={self.budget.max_seconds:g}) ran out")

    # -- steps --

    def plan(self, pred: dspy.Prediction) -> _Plan:
        thought = str(pred.get("next_thought") or "")
        name = str(pred.get("next_tool_name") or "").strip().strip("`'\"")
        args = pred.get("next_tool_args")
        if not isinstance(args, Mapping):
            return self.unparsed(thought, f"next_tool_args must be a JSON object, got {type(args).__name__}")
        args = dict(args)
        if name == FINISH and self.finish_barred():
            # Models without a grammar can still name it: refused like a tool off the allow-list.
            tools = ", ".join(self.agent.tools)
            return _Plan("refuse", thought, name, args, f"Call a tool first ({tools}); {FINISH} comes after.")
        if name == FINISH:
            return _Plan("finish", thought, FINISH, args)
        key = json.dumps([name, args], sort_keys=True, default=str)
        repeated = key in self.seen_calls
        self.seen_calls.add(key)
        if repeated and self.agent.stop_on_repeated_call:
            return _Plan("repeat", thought, name, args)
        if name not in self.agent.tools:
            shown = scrub(name, max_chars=60) or "(empty)"
            # An audit trail: a refused call may be a confused model or injected instructions.
            logger.warning(
                "agent %r refused a call to %r: not on its allow-list; nothing was run",
                self.agent.name,
                shown,
            )
            message = f"Tool {shown!r} is not available; nothing was run. Choose one of: {', '.join(self.agent.tool_names)}."
            return _Plan("refuse", thought, name, args, message)
        return _Plan("call", thought, name, args)

    def finish_barred(self) -> bool:
        """``finish`` is not allowed yet: a ``tool_first`` agent has not called a tool in this run."""
        return self.agent.tool_first and not any(s.outcome is StepOutcome.OK for s in self.steps)

    def unparsed(self, thought: str, reason: str) -> _Plan:
        names = ", ".join(self.agent.tool_names)
        message = (
            f"Your previous reply could not be used: {scrub(reason, max_chars=300)}. Reply with next_thought, "
            f"next_tool_name (one of: {names}) and next_tool_args (a JSON object of that tool's arguments)."
        )
        return _Plan("unparsed", thought, None, {}, message)

    def unparsed_from(self, err: AdapterParseError) -> _Plan:
        # The raw LM response is deliberately left out: it may be long and is the model's own text.
        reason = getattr(err, "message", None) or "the reply did not match the expected fields"
        return self.unparsed("", str(reason).split("\n", 1)[0])

    def record(
        self,
        index: int,
        plan: _Plan,
        *,
        outcome: StepOutcome,
        observation: str | None,
        error: str | None,
        started: float,
        tool_latency_ms: float | None,
        usage: UsageTracker,
        calls_before: int,
    ) -> AgentStep:
        prompt, completion = self.add_tokens(usage)
        step = AgentStep(
            index=index,
            thought=plan.thought,
            tool=plan.tool,
            args=plan.args,
            outcome=outcome,
            observation=observation,
            error=error,
            latency_ms=(time.perf_counter() - started) * 1000,
            tool_latency_ms=tool_latency_ms,
            prompt_tokens=prompt,
            completion_tokens=completion,
            lm_calls=self.counter.count - calls_before,
        )
        self.steps.append(step)
        self.parse_failures = self.parse_failures + 1 if plan.kind == "unparsed" else 0
        if outcome is StepOutcome.REPEATED:
            # Kept out of the trajectory the model reads next: the run ends here, and a small model
            # extracting the answer copies the last observation, which should be the real result.
            return step
        self.trajectory[f"thought_{index}"] = plan.thought
        self.trajectory[f"tool_name_{index}"] = plan.tool
        self.trajectory[f"tool_args_{index}"] = dict(plan.args)
        self.trajectory[f"observation_{index}"] = observation
        return step

    def add_tokens(self, usage: UsageTracker) -> tuple[int, int]:
        """Add an LM call's reported usage to the run's totals; returns (prompt, completion)."""
        prompt, completion = _token_totals(usage)
        self.prompt_tokens += prompt
        self.completion_tokens += completion
        return prompt, completion

    def after_step(self) -> tuple[TerminationReason, str] | None:
        step = self.steps[-1]
        if step.outcome is StepOutcome.FINISH:
            return TerminationReason.FINISH, "the model called finish"
        if step.outcome is StepOutcome.REPEATED:
            return TerminationReason.REPEATED_CALL, f"repeated call {step.tool}({_short_args(step.args)})"
        if self.parse_failures >= self.agent.max_parse_failures:
            return (
                TerminationReason.ERROR,
                f"the model's output could not be parsed {self.parse_failures} times in a row",
            )
        return None

    def observation_text(self, value: Any) -> str:
        return _observation_text(value, self.agent.max_observation_chars)

    def tool_failure(self, err: Exception) -> str:
        if isinstance(err, GeodeError):
            return scrub(str(err))
        return scrub(f"{type(err).__name__}: {err}")

    def termination(self, extracted: bool) -> Termination:
        reason, detail = self.end or (TerminationReason.ERROR, "the run ended without a reason")
        return Termination(
            reason=reason,
            detail=detail,
            iterations=len(self.steps),
            lm_calls=self.counter.count,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            seconds=time.monotonic() - self.started,
            extracted=extracted,
        )


def _token_totals(usage: UsageTracker) -> tuple[int, int]:
    prompt = completion = 0
    for totals in usage.get_total_tokens().values():
        prompt += int(totals.get("prompt_tokens") or 0)
        completion += int(totals.get("completion_tokens") or 0)
    return prompt, completion


def _observation_text(value: Any, limit: int) -> str:
    if isinstance(value, str):
        text = value
    elif isinstance(value, pydantic.BaseModel):
        text = value.model_dump_json()
    else:
        try:
            text = json.dumps(value, ensure_ascii=False, default=str)
        except (TypeError, ValueError):
            text = str(value)
    if len(text) > limit:
        text = f"{text[:limit]}... [truncated {len(text) - limit} characters]"
    return text


def _short_args(args: Mapping[str, Any]) -> str:
    # Names only: the detail goes on the span as a diagnostic, outside what hide_inputs hides, and a
    # tool argument can carry anything the user or the model wrote (a secret, an email address).
    return scrub(", ".join(str(k) for k in args), max_chars=120)
