"""Reusable workflows: ordinary DSPy modules with a fixed order of stages.

A workflow is hosted and traced like an agent (each stage is a child module, so each gets its own
span), but its control flow is code, not the model's choice: cheaper, predictable, and what agents
crystallize into. Two common shapes are provided:

- :class:`RAG`: retrieve passages for the question, then answer from them.
- :class:`DecomposeSolveCombine`: split a question into sub-questions, answer each (with any
  ``question -> answer`` program, an agent included), then combine the answers.
"""

from __future__ import annotations

import asyncio
from typing import Any

import dspy
from dspy.signatures.signature import ensure_signature

from geode.agents.tools import Passage, PassageSource, passages_of
from geode.errors import ConfigError, InputError

__all__ = ["RAG", "DecomposeSolveCombine"]


class RAG(dspy.Module):
    """Retrieve, then generate: the answer is produced from the top passages.

    Args:
        retriever: A ``geode.retrieval.Retriever`` (or anything called as ``retriever(query=, k=)``
            returning ``.passages``).
        signature: Must have a ``context`` input (``list[str]`` or ``str``); the other input is the
            query. Default ``"context: list[str], question -> answer"``.
        k: Passages to retrieve.
        query_field: Which input is the query; needed only if the signature has several others.
        reasoning: Use ``ChainOfThought`` (better with large models; slower on small ones).
        max_chars_per_passage: Longer passages are cut before they reach the prompt.

    The prediction has the signature's outputs plus ``passages`` (what was retrieved, for citations).
    """

    def __init__(
        self,
        retriever: PassageSource,
        signature: str | type[dspy.Signature] = "context: list[str], question -> answer",
        *,
        k: int = 3,
        query_field: str | None = None,
        reasoning: bool = False,
        max_chars_per_passage: int = 1500,
    ) -> None:
        super().__init__()
        resolved = ensure_signature(signature)
        if resolved is None or "context" not in resolved.input_fields:
            raise ConfigError(
                "RAG's signature needs a `context` input field, e.g. 'context: list[str], question -> answer'"
            )
        others = [name for name in resolved.input_fields if name != "context"]
        if query_field is None:
            if len(others) != 1:
                raise ConfigError(
                    f"RAG cannot tell which input is the query among {others}; pass query_field="
                )
            query_field = others[0]
        elif query_field not in others:
            raise ConfigError(
                f"query_field {query_field!r} is not an input of the signature (inputs: {others})"
            )
        if k < 1:
            raise ConfigError(f"RAG: k must be at least 1, got {k}")
        self.retriever = retriever
        self.signature = resolved
        self.k = k
        self.query_field = query_field
        self.max_chars_per_passage = max_chars_per_passage
        self._context_is_text = resolved.input_fields["context"].annotation is str
        self.generate = dspy.ChainOfThought(resolved) if reasoning else dspy.Predict(resolved)
        # What a caller passes and gets (the context is retrieved, never given): ``geode serve``'s schema.
        self.geode_signature = resolved.delete("context")

    def _context(self, passages: list[Passage]) -> list[str] | str:
        texts = [p.text.strip()[: self.max_chars_per_passage] for p in passages]
        return "\n\n".join(texts) if self._context_is_text else texts

    def _query(self, inputs: dict[str, Any]) -> str:
        if "context" in inputs:
            raise InputError("RAG retrieves its own context; do not pass `context`")
        query = inputs.get(self.query_field)
        if not isinstance(query, str) or not query.strip():
            raise InputError(f"RAG needs a non-empty `{self.query_field}`")
        return query

    def forward(self, **inputs: Any) -> dspy.Prediction:
        """Retrieve for the query input, then answer from the passages."""
        query = self._query(inputs)
        passages = list(passages_of(self.retriever(query=query, k=self.k)))
        pred = self.generate(context=self._context(passages), **inputs)
        return dspy.Prediction(**{k: pred.get(k) for k in self.signature.output_fields}, passages=passages)

    async def aforward(self, **inputs: Any) -> dspy.Prediction:
        """Async :meth:`forward` (a retriever without ``aforward`` runs in a worker thread)."""
        query = self._query(inputs)
        if isinstance(self.retriever, dspy.Module) and hasattr(type(self.retriever), "aforward"):
            result = await self.retriever.acall(query=query, k=self.k)
        else:
            # Store lookups block; keep them off the event loop (to_thread carries the context along).
            result = await asyncio.to_thread(self.retriever, query=query, k=self.k)
        passages = list(passages_of(result))
        pred = await self.generate.acall(context=self._context(passages), **inputs)
        return dspy.Prediction(**{k: pred.get(k) for k in self.signature.output_fields}, passages=passages)


class _Decompose(dspy.Signature):
    """Break the question into simpler, self-contained sub-questions whose answers together answer it.

    Use as few sub-questions as possible; a simple question needs just one (itself).
    """

    question: str = dspy.InputField()
    subquestions: list[str] = dspy.OutputField()


class _Combine(dspy.Signature):
    """Answer the question from the answers to its sub-questions."""

    question: str = dspy.InputField()
    subquestions: list[str] = dspy.InputField()
    subanswers: list[str] = dspy.InputField()
    answer: str = dspy.OutputField()


class DecomposeSolveCombine(dspy.Module):
    """Multi-stage question answering: decompose, solve each part, combine.

    Args:
        solver: Answers each sub-question: any program called as ``solver(question=...)`` whose
            prediction has ``answer`` (a ``dspy.Predict``, a :class:`RAG`, a ``geode.Agent``...).
            Default: ``dspy.Predict("question -> answer")``.
        max_parts: At most this many sub-questions are solved (extra ones are dropped).

    The prediction has ``answer`` plus ``subquestions`` and ``subanswers``.
    """

    def __init__(self, solver: dspy.Module | None = None, *, max_parts: int = 4) -> None:
        super().__init__()
        if max_parts < 1:
            raise ConfigError(f"max_parts must be at least 1, got {max_parts}")
        self.decompose = dspy.Predict(_Decompose)
        self.solve = solver if solver is not None else dspy.Predict("question -> answer")
        self.combine = dspy.Predict(_Combine)
        self.max_parts = max_parts

    def _parts(self, question: str, proposed: Any) -> list[str]:
        parts = [str(p).strip() for p in (proposed or []) if str(p).strip()]
        return parts[: self.max_parts] or [question]

    def forward(self, question: str) -> dspy.Prediction:
        """Answer ``question`` in three stages."""
        parts = self._parts(question, self.decompose(question=question).subquestions)
        answers = [_answer_of(self.solve(question=part)) for part in parts]
        combined = self.combine(question=question, subquestions=parts, subanswers=answers)
        return dspy.Prediction(answer=combined.answer, subquestions=parts, subanswers=answers)

    async def aforward(self, question: str) -> dspy.Prediction:
        """Async :meth:`forward` (sub-questions are solved one after another, in order)."""
        decomposed = await self.decompose.acall(question=question)
        parts = self._parts(question, decomposed.subquestions)
        answers = [_answer_of(await self.solve.acall(question=part)) for part in parts]
        combined = await self.combine.acall(question=question, subquestions=parts, subanswers=answers)
        return dspy.Prediction(answer=combined.answer, subquestions=parts, subanswers=answers)


def _answer_of(pred: Any) -> str:
    answer = pred.get("answer") if isinstance(pred, dspy.Prediction) else getattr(pred, "answer", None)
    if answer is None:
        return "(no answer)"
    return str(answer)
