"""``geode.Fallback``: graceful degradation between two programs, with the choice on the trace.

Run the primary program; if it raises, or its prediction fails validation, run the fallback instead.
Typical pairs: an agent and a fixed workflow, a large model and a small one, a RAG pipeline and a
closed-book answer. Which branch answered, and why, is recorded on the module's span
(``geode.fallback.choice`` / ``geode.fallback.reason``) and readable with :func:`fallback_choice`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import dspy

from geode.agents.scrub import scrub
from geode.errors import ConfigError
from geode.traces.vocab import GeodeAttributes

__all__ = ["Fallback", "FallbackChoice", "fallback_choice"]

Validator = Callable[[dspy.Prediction], bool]

_CHOICE_ATTR = "_geode_fallback_choice"


@dataclass(frozen=True)
class FallbackChoice:
    """Which branch of a :class:`Fallback` answered, and why the primary was passed over."""

    choice: Literal["primary", "fallback"]
    reason: str | None = None
    """``None`` when the primary answered; otherwise what went wrong with it (scrubbed)."""


def fallback_choice(prediction: dspy.Prediction) -> FallbackChoice | None:
    """The choice recorded on a prediction returned by a :class:`Fallback`, if any."""
    choice = getattr(prediction, _CHOICE_ATTR, None)
    return choice if isinstance(choice, FallbackChoice) else None


class Fallback(dspy.Module):
    """Primary, validated; else fallback.

    Args:
        primary: The program to try first.
        fallback: The program that answers when the primary raises or fails validation. It gets the
            same inputs; its own errors propagate.
        validate: Called with the primary's prediction; a falsy result (or an exception) sends the
            call to the fallback. Default: any prediction the primary returns is accepted.
        catch: Exception types from the primary that trigger the fallback (default: any
            ``Exception``; ``KeyboardInterrupt`` and cancellation always propagate).

    Example:
        >>> import dspy, geode
        >>> from geode.testing import ScriptedLM
        >>> program = geode.Fallback(
        ...     dspy.Predict("question -> answer"),
        ...     dspy.Predict("question -> answer"),
        ...     validate=lambda pred: pred.answer.strip() != "",
        ... )
        >>> with dspy.context(lm=ScriptedLM([{"answer": ""}, {"answer": "Paris"}])):
        ...     pred = program(question="Capital of France?")
        >>> pred.answer, geode.fallback_choice(pred).choice
        ('Paris', 'fallback')
    """

    def __init__(
        self,
        primary: dspy.Module,
        fallback: dspy.Module,
        *,
        validate: Validator | None = None,
        catch: tuple[type[Exception], ...] = (Exception,),
    ) -> None:
        super().__init__()
        if not callable(primary) or not callable(fallback):
            raise ConfigError("Fallback needs two callable programs (dspy.Module instances)")
        if not catch or not all(isinstance(c, type) and issubclass(c, Exception) for c in catch):
            raise ConfigError("Fallback(catch=...) must be a non-empty tuple of Exception subclasses")
        self.primary = primary
        self.fallback = fallback
        self.validate = validate
        self.catch = catch

    def geode_span_attributes(self, inputs: Mapping[str, Any], outputs: Any) -> dict[str, Any]:
        """Which branch answered, and why, for this module's span."""
        choice = fallback_choice(outputs) if isinstance(outputs, dspy.Prediction) else None
        if choice is None:
            return {}
        attributes: dict[str, Any] = {GeodeAttributes.FALLBACK_CHOICE: choice.choice}
        if choice.reason is not None:
            attributes[GeodeAttributes.FALLBACK_REASON] = choice.reason
        return attributes

    def _verdict(self, pred: Any) -> str | None:
        """Why the primary's result is not acceptable, or ``None`` if it is."""
        if not isinstance(pred, dspy.Prediction):
            return f"primary returned {type(pred).__name__}, not a dspy.Prediction"
        if self.validate is None:
            return None
        try:
            ok = self.validate(pred)
        except Exception as err:
            return f"validation raised {scrub(f'{type(err).__name__}: {err}', max_chars=200)}"
        return None if ok else "primary's prediction failed validation"

    @staticmethod
    def _raised(err: Exception) -> str:
        return f"primary raised {scrub(f'{type(err).__name__}: {err}', max_chars=200)}"

    @staticmethod
    def _mark(pred: dspy.Prediction, choice: FallbackChoice) -> dspy.Prediction:
        # A private attribute, not a field: the prediction's outputs stay exactly the branch's own.
        setattr(pred, _CHOICE_ATTR, choice)
        return pred

    def forward(self, **inputs: Any) -> dspy.Prediction:
        """Run the primary; on an error or failed validation, the fallback."""
        try:
            pred = self.primary(**inputs)
        except self.catch as err:
            reason = self._raised(err)
        else:
            reason = self._verdict(pred)
            if reason is None:
                return self._mark(pred, FallbackChoice("primary"))
        return self._mark(self.fallback(**inputs), FallbackChoice("fallback", reason))

    async def aforward(self, **inputs: Any) -> dspy.Prediction:
        """Async :meth:`forward`."""
        try:
            pred = await self.primary.acall(**inputs)
        except self.catch as err:
            reason = self._raised(err)
        else:
            reason = self._verdict(pred)
            if reason is None:
                return self._mark(pred, FallbackChoice("primary"))
        return self._mark(await self.fallback.acall(**inputs), FallbackChoice("fallback", reason))
