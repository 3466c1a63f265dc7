"""Typed fakes for testing programs that run on Geode.

Nothing in Geode's own runtime imports this package; tests and examples do.
"""

from geode.testing.lm import (
    ScriptedCall,
    ScriptedLM,
    ScriptExhaustedError,
    isolated_response_cache,
    response_cache_dir,
)
from geode.testing.programs import DraftThenAnswer, TicketTriage, triage_answers
from geode.testing.retrieval import HashingEmbedder
from geode.testing.tracing import in_memory_tracing, span_tree

__all__ = [
    "DraftThenAnswer",
    "HashingEmbedder",
    "ScriptExhaustedError",
    "ScriptedCall",
    "ScriptedLM",
    "TicketTriage",
    "in_memory_tracing",
    "isolated_response_cache",
    "response_cache_dir",
    "span_tree",
    "triage_answers",
]
