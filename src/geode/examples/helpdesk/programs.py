"""The helpdesk programs: a ``geode.Agent`` with search and a calculator, and a RAG workflow baseline.

Both answer ``question -> answer`` from a retriever over the helpdesk collection; build them with the
retriever you have (``rt.retriever(COLLECTION, k=...)`` in an application, a
``geode.retrieval.Retriever`` over any store in tests). They are sized for the embedded SmolLM2-135M:
few passages, short passages, short thoughts and a small iteration budget, because every token costs
about a tenth of a second on two CPU cores.
"""

from __future__ import annotations

import dspy

from geode.agents.agent import Agent
from geode.agents.calculator import calculate
from geode.agents.steps import Budget
from geode.agents.tools import PassageSource, search_tool
from geode.agents.workflows import RAG

__all__ = ["AGENT_NAME", "HelpdeskAnswer", "HelpdeskContextAnswer", "build_agent", "build_rag"]

AGENT_NAME = "helpdesk"
"""The agent's name (on its AGENT span)."""


class HelpdeskAnswer(dspy.Signature):
    """Answer a customer's question about the Northwind Outfitters shop or about Geode.

    Search the knowledge base first. Reply with a number or a few words copied from the passages;
    use the calculator for totals.
    """

    question: str = dspy.InputField()
    answer: str = dspy.OutputField(desc="a number or a few words copied from the passages")


SEARCH_ONLY = (
    "Answer a customer's question about the Northwind Outfitters shop or about Geode.\n\n"
    "Search the knowledge base first. Reply with a number or a few words copied from the passages."
)
"""The agent's instructions when it has no calculator."""


class HelpdeskContextAnswer(dspy.Signature):
    """Answer a customer's question from the passages. Reply with a number or a few words copied from them."""

    context: str = dspy.InputField(desc="passages from the knowledge base")
    question: str = dspy.InputField()
    # max_length: "a few words" as a length; SmallModelAdapter stops a plain-text reply there.
    answer: str = dspy.OutputField(desc="a number or a few words copied from the passages", max_length=100)


def build_agent(
    retriever: PassageSource,
    *,
    k: int = 2,
    max_chars_per_passage: int = 400,
    budget: Budget | None = None,
    max_thought_chars: int = 160,
    calculator: bool = True,
    tool_first: bool = True,
    extract_thoughts: bool = False,
    extract_reasoning: bool = False,
    passage_ids: bool = False,
) -> Agent:
    """The helpdesk agent: ``search`` over the knowledge base (and ``calculate``), then ``finish``.

    Args:
        retriever: Searches the helpdesk collection (called as ``retriever(query=..., k=...)``).
        k: Passages per search.
        max_chars_per_passage: Longer passages are cut before the model reads them.
        budget: Limits per run; default: 3 iterations and 300 seconds (a run cut by the time budget
            has no answer, so the limit is for runaway runs, not to keep runs short).
        max_thought_chars: Cap on each step's thought (with grammar-constrained models), which bounds
            the tokens a small model spends per step. Room for a whole sentence: a cap that cuts the
            thought mid-word (40 characters) left the model a stub ("The next-t") that it then copied
            into the search argument.
        calculator: Offer the ``calculate`` tool (for the questions that need arithmetic). The demo
            leaves it out on the embedded model: SmolLM2-135M called it with sentences instead of
            searching ("The Squall rain jacket costs $1.00"), and the arithmetic questions are the ones
            whose facts retrieval does not bring together in two passages anyway.
        tool_first: Search before ``finish`` is offered (``geode.Agent(tool_first=True)``): without it
            SmolLM2-135M finished at once on 3 of 8 training questions, answering from its own
            thought ("The Ridgeline backpacking tent ... costs $100").
        extract_thoughts: Let the final answer step read the steps' thoughts. Off by default: the
            model's thoughts are guesses made before it searched, and it copied them into its answers.
        extract_reasoning: Write a ``reasoning`` before the answer (``dspy.ChainOfThought``). Off by
            default: the model's reasoning wandered off the passages and its answer followed it.
        passage_ids: Show passage ids in the search results (``search_tool(passage_ids=)``); off, since
            the model has no use for UUIDs.
    """
    passages = search_tool(
        retriever, k=k, max_chars_per_passage=max_chars_per_passage, passage_ids=passage_ids
    )

    def search(question: str) -> str:
        """Search the shop's help centre, product catalogue and Geode's docs for the question."""
        # The argument is named like the agent's input: a small model then tends to copy the question
        # into it, where a `query` argument drew copies of its schema description instead.
        return str(passages.func(query=question))

    # Without the calculator the instructions must not mention it: the answer step a crystallized
    # workflow derives from this agent inherits them.
    signature = HelpdeskAnswer if calculator else HelpdeskAnswer.with_instructions(SEARCH_ONLY)
    return Agent(
        signature,
        tools=[search, calculate] if calculator else [search],
        name=AGENT_NAME,
        budget=budget or Budget(max_iters=3, max_seconds=300.0),
        max_thought_chars=max_thought_chars,
        tool_first=tool_first,
        extract_thoughts=extract_thoughts,
        extract_reasoning=extract_reasoning,
    )


def build_rag(retriever: PassageSource, *, k: int = 2, max_chars_per_passage: int = 400) -> RAG:
    """The hand-written workflow baseline: retrieve ``k`` passages for the question, answer from them."""
    return RAG(
        retriever,
        HelpdeskContextAnswer,
        k=k,
        query_field="question",
        max_chars_per_passage=max_chars_per_passage,
    )
