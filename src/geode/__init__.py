"""Geode: a runtime for DSPy programs you can watch, measure and improve.

The public API is re-exported here lazily, so ``import geode`` stays cheap until a name is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "Runtime": "geode.runtime.runtime",
    "trace_id_of": "geode.runtime.runtime",
    "Settings": "geode.runtime.settings",
    "register_program": "geode.runtime.programs",
    "LocalLM": "geode.runtime.lm.local",
    "SmallModelAdapter": "geode.adapters",
    "Retriever": "geode.retrieval.retriever",
    "open_retriever": "geode.runtime.stores",
    "Agent": "geode.agents.agent",
    "AgentStep": "geode.agents.steps",
    "Budget": "geode.agents.steps",
    "Fallback": "geode.agents.fallback",
    "fallback_choice": "geode.agents.fallback",
    "tool": "geode.agents.tools",
    "search_tool": "geode.agents.tools",
    "Calculator": "geode.agents.calculator",
    "calculate": "geode.agents.calculator",
    "crystallize": "geode.agents.crystallize.crystallization",
    "CrystallizedWorkflow": "geode.agents.crystallize.workflow",
    "WorkflowSpec": "geode.agents.crystallize.spec",
    "instrument": "geode.runtime.instrumentation",
    "uninstrument": "geode.runtime.instrumentation",
    "mine": "geode.evals.mining",
    "BudgetExceededError": "geode.errors",
    "ClientClosedError": "geode.errors",
    "CollectionNotFoundError": "geode.errors",
    "ConfigError": "geode.errors",
    "CrystallizeError": "geode.errors",
    "DatasetError": "geode.errors",
    "DeadlineExceededError": "geode.errors",
    "ExpressionError": "geode.errors",
    "GeodeError": "geode.errors",
    "InputError": "geode.errors",
    "LMError": "geode.errors",
    "LMRateLimitedError": "geode.errors",
    "LMTimeoutGeodeError": "geode.errors",
    "MissingExtraError": "geode.errors",
    "ModelFileError": "geode.errors",
    "NotFoundError": "geode.errors",
    "OutputParseError": "geode.errors",
    "OverloadedError": "geode.errors",
    "PayloadTooLargeError": "geode.errors",
    "PhoenixPortInUseError": "geode.errors",
    "PhoenixStartError": "geode.errors",
    "ProgramConfiguresDSPyError": "geode.errors",
    "ProgramLoadError": "geode.errors",
    "ProgramNotFoundError": "geode.errors",
    "RateLimitedError": "geode.errors",
    "RetrievalError": "geode.errors",
    "ServiceUnavailableError": "geode.errors",
    "StoreUnavailableError": "geode.errors",
    "ToolArgumentError": "geode.errors",
    "ToolError": "geode.errors",
    "ToolTimeoutError": "geode.errors",
    "TraceSourceError": "geode.errors",
    "UnauthorizedError": "geode.errors",
    "VersionError": "geode.errors",
    "WorkflowGuardError": "geode.errors",
    "WorkflowSpecError": "geode.errors",
}

__all__ = [  # kept equal to _EXPORTS by tests/unit/test_public_api.py
    "Agent",
    "AgentStep",
    "Budget",
    "BudgetExceededError",
    "Calculator",
    "ClientClosedError",
    "CollectionNotFoundError",
    "ConfigError",
    "CrystallizeError",
    "CrystallizedWorkflow",
    "DatasetError",
    "DeadlineExceededError",
    "ExpressionError",
    "Fallback",
    "GeodeError",
    "InputError",
    "LMError",
    "LMRateLimitedError",
    "LMTimeoutGeodeError",
    "LocalLM",
    "MissingExtraError",
    "ModelFileError",
    "NotFoundError",
    "OutputParseError",
    "OverloadedError",
    "PayloadTooLargeError",
    "PhoenixPortInUseError",
    "PhoenixStartError",
    "ProgramConfiguresDSPyError",
    "ProgramLoadError",
    "ProgramNotFoundError",
    "RateLimitedError",
    "RetrievalError",
    "Retriever",
    "Runtime",
    "ServiceUnavailableError",
    "Settings",
    "SmallModelAdapter",
    "StoreUnavailableError",
    "ToolArgumentError",
    "ToolError",
    "ToolTimeoutError",
    "TraceSourceError",
    "UnauthorizedError",
    "VersionError",
    "WorkflowGuardError",
    "WorkflowSpec",
    "WorkflowSpecError",
    "__version__",
    "calculate",
    "crystallize",
    "fallback_choice",
    "instrument",
    "mine",
    "open_retriever",
    "register_program",
    "search_tool",
    "tool",
    "trace_id_of",
    "uninstrument",
]

if TYPE_CHECKING:  # for type checkers and IDEs; at run time names load on first use
    from geode.adapters import SmallModelAdapter as SmallModelAdapter
    from geode.agents.agent import Agent as Agent
    from geode.agents.calculator import Calculator as Calculator
    from geode.agents.calculator import calculate as calculate
    from geode.agents.crystallize.crystallization import crystallize as crystallize
    from geode.agents.crystallize.spec import WorkflowSpec as WorkflowSpec
    from geode.agents.crystallize.workflow import CrystallizedWorkflow as CrystallizedWorkflow
    from geode.agents.fallback import Fallback as Fallback
    from geode.agents.fallback import fallback_choice as fallback_choice
    from geode.agents.steps import AgentStep as AgentStep
    from geode.agents.steps import Budget as Budget
    from geode.agents.tools import search_tool as search_tool
    from geode.agents.tools import tool as tool
    from geode.errors import (  # re-exported: every name is in __all__
        BudgetExceededError,
        ClientClosedError,
        CollectionNotFoundError,
        ConfigError,
        CrystallizeError,
        DatasetError,
        DeadlineExceededError,
        ExpressionError,
        GeodeError,
        InputError,
        LMError,
        LMRateLimitedError,
        LMTimeoutGeodeError,
        MissingExtraError,
        ModelFileError,
        NotFoundError,
        OutputParseError,
        OverloadedError,
        PayloadTooLargeError,
        PhoenixPortInUseError,
        PhoenixStartError,
        ProgramConfiguresDSPyError,
        ProgramLoadError,
        ProgramNotFoundError,
        RateLimitedError,
        RetrievalError,
        ServiceUnavailableError,
        StoreUnavailableError,
        ToolArgumentError,
        ToolError,
        ToolTimeoutError,
        TraceSourceError,
        UnauthorizedError,
        VersionError,
        WorkflowGuardError,
        WorkflowSpecError,
    )
    from geode.evals.mining import mine as mine
    from geode.retrieval.retriever import Retriever as Retriever
    from geode.runtime.instrumentation import instrument as instrument
    from geode.runtime.instrumentation import uninstrument as uninstrument
    from geode.runtime.lm.local import LocalLM as LocalLM
    from geode.runtime.programs import register_program as register_program
    from geode.runtime.runtime import Runtime as Runtime
    from geode.runtime.runtime import trace_id_of as trace_id_of
    from geode.runtime.settings import Settings as Settings
    from geode.runtime.stores import open_retriever as open_retriever


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'geode' has no attribute {name!r}")
    if module.startswith("geode.agents.crystallize"):
        # Specs are signed and checked with the operator's key, which the runtime installs on import.
        importlib.import_module("geode.runtime")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
