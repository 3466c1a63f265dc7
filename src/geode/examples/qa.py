"""A small grounded question-answering program: pick the most relevant facts, answer from them.

Run it with the embedded local model::

    geode run geode.examples.qa:program --input question="What is the capital of France?"

The facts are picked by word overlap so the example needs no vector store; the bundled demo application
(``geode demo``) does the same job with Qdrant retrieval.
"""

from __future__ import annotations

import re

import dspy

__all__ = ["FACTS", "ContextQA", "FactQA", "program"]

FACTS: tuple[str, ...] = (
    "Paris is the capital of France.",
    "Berlin is the capital of Germany.",
    "Tokyo is the capital of Japan.",
    "Canberra is the capital of Australia.",
    "Ottawa is the capital of Canada.",
    "The Nile is the longest river in Africa.",
    "Mount Everest is the highest mountain on Earth, 8,849 metres above sea level.",
    "Water boils at 100 degrees Celsius at sea level.",
    "The Pacific is the largest ocean on Earth.",
    "Jupiter is the largest planet in the Solar System.",
    "DSPy is a framework for programming, rather than prompting, language models.",
    "Geode is a runtime that hosts, traces and improves DSPy programs.",
    "Arize Phoenix is an open-source tool for viewing LLM traces.",
    "Qdrant is a vector database for similarity search.",
)

_WORD = re.compile(r"[a-z0-9]+")
_STOP = frozenset("a an the is of in on at to what which who how many much does do and for by".split())


def _words(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if w not in _STOP}


class ContextQA(dspy.Signature):
    """Answer the question using only the context. Reply with a short phrase copied from the context."""

    context: str = dspy.InputField(desc="facts that may contain the answer")
    question: str = dspy.InputField()
    answer: str = dspy.OutputField(desc="a short answer, a few words copied from the context")


class FactQA(dspy.Module):
    """Answer a question from the most relevant of a fixed set of facts.

    Args:
        facts: The knowledge to answer from.
        k: How many facts to put in the context.
    """

    def __init__(self, facts: tuple[str, ...] = FACTS, k: int = 2) -> None:
        super().__init__()
        self.facts = facts
        self.k = k
        self.answer = dspy.Predict(ContextQA)

    def select(self, question: str) -> list[str]:
        """The ``k`` facts sharing the most words with the question."""
        asked = _words(question)
        ranked = sorted(self.facts, key=lambda fact: len(asked & _words(fact)), reverse=True)
        return ranked[: self.k]

    def forward(self, question: str) -> dspy.Prediction:
        """Answer ``question`` from the selected facts."""
        context = "\n".join(self.select(question))
        return self.answer(context=context, question=question)


program = FactQA()
