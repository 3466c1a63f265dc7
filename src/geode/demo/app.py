"""Zero-argument factories of the helpdesk programs, for the CLI and for workflow specs.

``geode run geode.demo.app:agent -i question=...`` (after ``geode demo`` has ingested the corpus) builds
the agent over the embedded store of the current settings (``GEODE_HOME``...). The crystallized
workflow's spec names :func:`agent` as the agent it falls back to. The store is opened on first use and
stays open (and locked) for the life of the process.
"""

from __future__ import annotations

from geode.agents.agent import Agent
from geode.agents.workflows import RAG
from geode.examples import helpdesk
from geode.retrieval import Retriever
from geode.runtime.settings import Settings
from geode.runtime.stores import open_retriever

__all__ = ["agent", "rag", "retriever"]


def retriever() -> Retriever:
    """A retriever over the helpdesk collection of the configured store (the documented way)."""
    return open_retriever(helpdesk.COLLECTION, k=2)


def agent() -> Agent:
    """The helpdesk agent (``geode.demo.app:agent``), with the tools ``geode demo`` gives it for the LM in use.

    On the embedded model the demo's agent has no calculator (see ``helpdesk.build_agent``), so the agent
    a crystallized workflow falls back to is the one whose runs it was derived from.
    """
    return helpdesk.build_agent(retriever(), calculator=Settings().lm.model != "local")


def rag() -> RAG:
    """The hand-written retrieve-then-answer baseline (``geode.demo.app:rag``)."""
    return helpdesk.build_rag(retriever())
