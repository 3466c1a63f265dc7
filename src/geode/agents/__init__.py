"""Agents, tools and workflows: ``geode.Agent``, guarded tools, ``geode.Fallback`` and workflow modules."""

from geode.agents.agent import Agent
from geode.agents.calculator import Calculator, ExpressionError, calculate
from geode.agents.fallback import Fallback, FallbackChoice, fallback_choice
from geode.agents.steps import AgentStep, Budget, StepOutcome, Termination, TerminationReason
from geode.agents.tools import (
    GuardedTool,
    Passage,
    PassageSource,
    ToolArgumentError,
    guard,
    search_tool,
    tool,
)
from geode.agents.workflows import RAG, DecomposeSolveCombine

__all__ = [
    "RAG",
    "Agent",
    "AgentStep",
    "Budget",
    "Calculator",
    "DecomposeSolveCombine",
    "ExpressionError",
    "Fallback",
    "FallbackChoice",
    "GuardedTool",
    "Passage",
    "PassageSource",
    "StepOutcome",
    "Termination",
    "TerminationReason",
    "ToolArgumentError",
    "calculate",
    "fallback_choice",
    "guard",
    "search_tool",
    "tool",
]
