"""Crystallization: from an agent's recorded runs to a fixed-order workflow that does the same job.

1. :func:`read_runs` / :func:`runs_from_traces` turn traces into typed :class:`AgentRun` records;
2. :func:`analyze` groups successful runs into tool patterns and finds how every argument is derived;
3. :func:`build_spec` (or :func:`crystallize`, which does all of it) writes a :class:`WorkflowSpec`;
   :func:`check_cost` says whether it is expected to make fewer LM calls than the agent did;
4. :class:`CrystallizedWorkflow` runs a spec, with the agent as the guard for inputs it cannot handle;
   its :class:`WorkflowShape` (passages per tool result, tool results first) is part of its saved state;
5. :func:`emit_python` writes the same workflow as a Python module you can own and edit.
"""

from geode.agents.crystallize.build import CrystallizeError, CrystallizeOptions, build_spec, choose_patterns
from geode.agents.crystallize.codegen import emit_python
from geode.agents.crystallize.cost import CostCheck, check_cost
from geode.agents.crystallize.crystallization import Crystallization, crystallize, score_runs
from geode.agents.crystallize.patterns import (
    Analysis,
    Derivation,
    Pattern,
    StepAnalysis,
    analyze,
    learn_extractor,
)
from geode.agents.crystallize.report import render_report
from geode.agents.crystallize.runs import AgentRun, RunScore, ToolCall, read_runs, runs_from_traces
from geode.agents.crystallize.shape import WorkflowShape
from geode.agents.crystallize.spec import WorkflowSpec, WorkflowSpecError
from geode.agents.crystallize.workflow import CrystallizedWorkflow, WorkflowGuardError, workflow_route

__all__ = [
    "AgentRun",
    "Analysis",
    "CostCheck",
    "Crystallization",
    "CrystallizeError",
    "CrystallizeOptions",
    "CrystallizedWorkflow",
    "Derivation",
    "Pattern",
    "RunScore",
    "StepAnalysis",
    "ToolCall",
    "WorkflowGuardError",
    "WorkflowShape",
    "WorkflowSpec",
    "WorkflowSpecError",
    "analyze",
    "build_spec",
    "check_cost",
    "choose_patterns",
    "crystallize",
    "emit_python",
    "learn_extractor",
    "read_runs",
    "render_report",
    "runs_from_traces",
    "score_runs",
    "workflow_route",
]
