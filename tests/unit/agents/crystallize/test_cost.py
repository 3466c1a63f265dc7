"""The cost check: a workflow's expected LM calls per input against the agent's on the recorded runs."""

from __future__ import annotations

from dataclasses import replace

import pytest
from tests.unit.agents.crystallize.scenario import TRUSTED, Recorded

from geode.agents.crystallize import AgentRun, CrystallizeOptions, check_cost, crystallize
from geode.agents.crystallize.report import route_lm_calls


def test_a_router_workflow_is_weighed_by_route_shares_and_the_agent_pays_for_the_rest(
    recorded: Recorded, recorded_runs: list[AgentRun]
) -> None:
    found = crystallize(
        recorded.agent,
        recorded_runs,
        options=CrystallizeOptions(min_share=0.9, max_routes=2, unscored_ok=True),
    )
    spec = found.spec
    assert spec.router is not None and len(spec.routes) >= 2

    check = check_cost(found)
    agent = sum(r.lm_calls for r in found.runs) / len(found.runs)
    shares = {p.label: p.share for p in spec.source.patterns if p.chosen}
    covered = sum(shares[r.label] for r in spec.routes)
    expected = 1 + sum(shares[r.label] * (route_lm_calls(spec, r) - 1) for r in spec.routes)
    expected += (1 - covered) * agent
    assert check.agent_lm_calls == pytest.approx(agent)
    assert check.covered == pytest.approx(covered) and check.covered < 1
    assert check.workflow_lm_calls == pytest.approx(expected)
    assert check.runs == len(found.runs)


def test_a_workflow_that_saves_nothing_is_reported_as_not_cheaper(
    recorded: Recorded, recorded_runs: list[AgentRun]
) -> None:
    found = crystallize(recorded.agent, recorded_runs, options=TRUSTED)
    assert check_cost(found).cheaper  # the scripted agent spends 3+ calls a run; a route far fewer

    # The same spec against runs where the agent made a single LM call each: nothing to save.
    frugal = replace(found, runs=tuple(replace(r, lm_calls=1) for r in found.runs))
    check = check_cost(frugal)
    assert not check.cheaper and check.agent_lm_calls == 1.0
    assert "no fewer than the agent's 1.0" in check.describe()
