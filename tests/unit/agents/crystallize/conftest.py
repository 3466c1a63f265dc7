"""Recorded runs of the scripted inventory agent, shared by the crystallization tests (recorded once)."""

from __future__ import annotations

import pytest
from tests.unit.agents.crystallize.scenario import Recorded, record_runs

from geode.agents.crystallize import AgentRun, runs_from_traces


@pytest.fixture(scope="session")
def recorded() -> Recorded:
    return record_runs()


@pytest.fixture(scope="session")
def recorded_runs(recorded: Recorded) -> list[AgentRun]:
    return runs_from_traces(recorded.source.traces())
