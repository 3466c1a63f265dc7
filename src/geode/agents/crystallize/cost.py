"""Is the workflow worth having? Its expected LM calls against what the agent spent on the same runs.

Crystallization exists to make an agent cheaper. A workflow whose route needs an LM step per argument, or
whose router adds a call, can cost *more* than the agent did (an agent that searched once and answered
costs 2 calls; a route with an LM step for the query, one for the answer and a router costs 3). And inputs
the routes do not cover fall back to the agent, at the agent's price plus the router's call. This module
estimates the workflow's LM calls per input from the recorded runs the spec was built from, so a caller
can keep the agent when the workflow would not save anything, and say so with the figures.
"""

from __future__ import annotations

from dataclasses import dataclass

from geode.agents.crystallize.crystallization import Crystallization
from geode.agents.crystallize.report import route_lm_calls

__all__ = ["CostCheck", "check_cost"]


@dataclass(frozen=True)
class CostCheck:
    """The workflow's expected LM calls per input against the agent's, on the recorded runs."""

    agent_lm_calls: float
    """The agent's mean LM calls per recorded run (every run read, failed ones included)."""
    workflow_lm_calls: float
    """Expected LM calls per input: each route's calls weighted by its share of the successful runs, plus
    the agent's calls (and the router's) for the share no route covers."""
    covered: float
    """Share of inputs a route serves: every input with a single route (only a failing step falls back),
    else the routed patterns' share of the successful runs (the router sends the rest to the agent)."""
    runs: int
    """Recorded runs the agent figure is the mean of."""

    @property
    def cheaper(self) -> bool:
        """True when the workflow is expected to make fewer LM calls per input than the agent."""
        return self.workflow_lm_calls < self.agent_lm_calls

    def describe(self) -> str:
        """One sentence with both figures, e.g. for a warning or a report."""
        verdict = "fewer" if self.cheaper else "no fewer"
        return (
            f"the workflow would make {self.workflow_lm_calls:.1f} LM calls per input, {verdict} than the "
            f"agent's {self.agent_lm_calls:.1f} on its {self.runs} recorded runs "
            f"(its routes cover {self.covered:.0%} of the successful runs; the rest fall back to the agent)"
        )


def check_cost(crystallization: Crystallization) -> CostCheck:
    """Estimate the workflow's LM calls per input from the runs it was derived from.

    Args:
        crystallization: What :func:`~geode.agents.crystallize.crystallize` returned.

    Returns:
        Both figures; :attr:`CostCheck.cheaper` says whether the workflow saves LM calls.

    Example:
        >>> check = check_cost(found)  # doctest: +SKIP
        >>> check.cheaper, check.describe()  # doctest: +SKIP
        (True, 'the workflow would make 1.0 LM calls per input, fewer than the agent's 3.0 on its 12 ...')
    """
    spec = crystallization.spec
    runs = crystallization.runs
    agent = sum(r.lm_calls for r in runs) / len(runs) if runs else 0.0
    router = 1.0 if spec.router is not None else 0.0
    if spec.router is None:
        # One route serves every input; what falls back on a failing step cannot be told from the runs.
        weights = {route.label: 1.0 for route in spec.routes}
    else:
        weights = {p.label: p.share for p in spec.source.patterns if p.chosen}
    covered = min(1.0, sum(weights.get(route.label, 0.0) for route in spec.routes))
    # Each route's own steps for the inputs it serves; the router (if any) is paid by every input, and
    # inputs it sends to the agent (`other`) cost the agent's run on top.
    own = sum(weights.get(r.label, 0.0) * (route_lm_calls(spec, r) - router) for r in spec.routes)
    workflow = router + own + (1.0 - covered) * agent
    return CostCheck(agent_lm_calls=agent, workflow_lm_calls=workflow, covered=covered, runs=len(runs))
