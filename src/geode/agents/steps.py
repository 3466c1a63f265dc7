"""Typed records of an agent run: its budget, each step, and how it ended."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from geode.errors import ConfigError

__all__ = ["AgentStep", "Budget", "StepOutcome", "Termination", "TerminationReason"]


class TerminationReason(StrEnum):
    """Why an agent run ended (the value of ``geode.agent.termination`` on the AGENT span)."""

    FINISH = "finish"
    """The model called ``finish``."""
    MAX_ITERS = "max_iters"
    """The run used all its iterations without calling ``finish``."""
    BUDGET = "budget"
    """An LM-call, token or time budget ran out (``Termination.detail`` says which)."""
    REPEATED_CALL = "repeated_call"
    """The model repeated an identical tool call; the run stopped with what it had."""
    ERROR = "error"
    """The model's output could not be parsed repeatedly, the context window overflowed, or the final
    answer could not be extracted."""


class StepOutcome(StrEnum):
    """What became of one agent step."""

    OK = "ok"
    """The tool ran and returned."""
    FINISH = "finish"
    """The model called ``finish``."""
    TOOL_ERROR = "tool_error"
    """The tool raised; the model was shown the scrubbed error."""
    TIMEOUT = "timeout"
    """The tool did not return within its timeout."""
    INVALID_ARGS = "invalid_args"
    """The arguments did not match the tool's schema; the tool did not run."""
    NOT_ALLOWED = "not_allowed"
    """The model named a tool outside the allow-list; nothing ran."""
    UNPARSED = "unparsed"
    """The model's reply could not be parsed into a step."""
    REPEATED = "repeated"
    """An identical tool call was already made; it was not run again and the loop ended."""
    BUDGET = "budget"
    """The run's time budget ran out during this step."""


_MALFORMED = frozenset({StepOutcome.UNPARSED, StepOutcome.NOT_ALLOWED, StepOutcome.INVALID_ARGS})


@dataclass(frozen=True)
class Budget:
    """Limits for one agent run; exceeding any of them ends the run cleanly.

    ``max_lm_calls`` is never exceeded: a step starts only if the calls it may need (two when a chat
    adapter may retry in JSON mode), plus one for extracting the final answer, still fit.
    ``max_tokens`` and ``max_seconds`` are checked before each LM call; a time-budgeted LM call or
    tool call is abandoned at the deadline. When tokens or time run out, no final LM call is made and
    the outputs are ``None``.

    Example:
        >>> Budget(max_iters=5, max_seconds=30).max_iters
        5
    """

    max_iters: int = 10
    max_lm_calls: int | None = None
    max_tokens: int | None = None
    """Prompt plus completion tokens over every LM call of the run (as the LM reports usage)."""
    max_seconds: float | None = None

    def __post_init__(self) -> None:
        if self.max_iters < 1:
            raise ConfigError(f"Budget.max_iters must be at least 1, got {self.max_iters}")
        for name in ("max_lm_calls", "max_tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"Budget.{name} must be at least 1 or None, got {value}")
        if self.max_seconds is not None and self.max_seconds <= 0:
            raise ConfigError(f"Budget.max_seconds must be positive or None, got {self.max_seconds}")


@dataclass(frozen=True)
class AgentStep:
    """One iteration of an agent run: what the model thought and chose, and what came back.

    A step whose model reply could not be parsed has ``tool=None`` and an ``error``; a step that
    called ``finish`` has ``tool="finish"`` and no observation.
    """

    index: int
    thought: str
    tool: str | None
    args: Mapping[str, Any] = field(default_factory=dict[str, Any])
    outcome: StepOutcome = StepOutcome.OK
    observation: str | None = None
    """The tool's result as the model saw it (possibly truncated), or the corrective message."""
    error: str | None = None
    """What went wrong in this step, scrubbed of secrets and paths (also what the model was told)."""
    latency_ms: float = 0.0
    """Wall time of the whole step: LM call plus tool call."""
    tool_latency_ms: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    lm_calls: int = 0

    @property
    def ok(self) -> bool:
        """True when the step parsed and its tool call (if any) succeeded."""
        return self.error is None

    @property
    def well_formed(self) -> bool:
        """True when the model produced a usable step: parsed, an allowed tool, valid arguments.

        A well-formed call whose tool then failed or timed out still counts: the model did its part.
        A step cut short by the time budget is not a model step at all and does not count either way.
        """
        return self.outcome not in _MALFORMED

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of this step."""
        data = asdict(self)
        data["args"] = dict(self.args)
        data["outcome"] = str(self.outcome)
        return data


@dataclass(frozen=True)
class Termination:
    """How an agent run ended, with its totals."""

    reason: TerminationReason
    detail: str
    """A short human-readable explanation, e.g. ``"max_lm_calls=6 reached"``."""
    iterations: int
    lm_calls: int
    prompt_tokens: int
    completion_tokens: int
    seconds: float
    extracted: bool
    """Whether the outputs were extracted by the model (``False`` means they are ``None``)."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of this record."""
        data = asdict(self)
        data["reason"] = str(self.reason)
        return data
