"""Small real DSPy programs for tests and benchmarks: two named predictors each, and one way to fail.

They run on any LM; :func:`triage_answers` scripts a :class:`~geode.testing.ScriptedLM` for
:class:`TicketTriage`. Mining, tracing and feedback tests need runs with more than one predictor span
and a run that raises part-way, which these give without a model.
"""

from __future__ import annotations

import dspy

__all__ = ["DraftThenAnswer", "TicketTriage", "triage_answers"]


class TicketTriage(dspy.Module):
    """Classify a support ticket (``classify``), then reply to it (``reply``).

    A ticket containing ``crash`` raises ``RuntimeError`` after the first predictor, so a traced run
    fails with one LM call recorded.
    """

    def __init__(self) -> None:
        super().__init__()
        self.classify = dspy.Predict("ticket -> category")
        self.reply = dspy.Predict("ticket, category -> reply")

    def forward(self, ticket: str) -> dspy.Prediction:
        """Classify, then reply (or fail on a ``crash`` ticket)."""
        category = self.classify(ticket=ticket).category
        if "crash" in ticket:
            raise RuntimeError("reply service unavailable")
        return self.reply(ticket=ticket, category=category)


def triage_answers(messages: list[dict[str, str]]) -> dict[str, str]:
    """:class:`TicketTriage`'s script: every ticket is ``billing``, every reply the same apology."""
    if "[[ ## reply ## ]]" in messages[0]["content"]:
        return {"reply": "Sorry about that, we are on it."}
    return {"category": "billing"}


class DraftThenAnswer(dspy.Module):
    """Two named predictors: ``draft`` (``Predict``) and ``answer.predict`` (inside ``ChainOfThought``).

    A question starting with ``explode`` raises ``ValueError`` between the two.
    """

    def __init__(self) -> None:
        super().__init__()
        self.draft = dspy.Predict("question -> draft")
        self.answer = dspy.ChainOfThought("question, draft -> answer")

    def forward(self, question: str) -> dspy.Prediction:
        """Draft, then answer with the draft (or fail on an ``explode`` question)."""
        draft = self.draft(question=question).draft
        if question.startswith("explode"):
            raise ValueError("the calculator exploded")
        return self.answer(question=question, draft=draft)
