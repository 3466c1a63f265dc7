"""Fuzzing the workflow-spec loader: a spec file is untrusted input that names code to run.

Must hold for any text, and for any mutation of a real crystallized spec (values replaced by any JSON,
keys dropped or added, strings replaced by hostile patterns): ``WorkflowSpec.from_json`` returns a spec
or raises ``WorkflowSpecError`` (a ``ProgramLoadError``: the server's clear ``invalid_program_file``), in
bounded time, and imports nothing while checking.
"""

from __future__ import annotations

import copy
import functools
import json
import sys
from typing import Any

import pytest
from tests.tiers import require_tier

from geode.agents.crystallize import WorkflowSpec, WorkflowSpecError, crystallize
from geode.refs import SpecTrust

from .conftest import Timings

pytestmark = pytest.mark.fuzz
require_tier("fuzz", import_name="hypothesis")

from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

BOUND_S = 1.0
# Unsigned specs are let in so that every check after the signature's is reached too.
OPEN = SpecTrust(allow_unsigned=True)


@functools.cache
def _valid_spec() -> dict[str, Any]:
    from tests.unit.agents.crystallize.scenario import TRUSTED, record_runs

    recorded = record_runs()
    result = crystallize(
        recorded.agent, recorded.source, options=TRUSTED, agent_ref="geode.examples.inventory:agent"
    )
    return json.loads(result.spec.to_json(OPEN))


any_text = st.text(alphabet=st.characters(exclude_categories=()), max_size=200)
hostile_strings = st.sampled_from(
    [
        "(a+)+$",
        "(?:x|x)*y",
        "[",
        "(?P<a>",
        "\\",
        "os:system",
        "subprocess:run",
        "builtins:eval",
        "../../etc/passwd",
        "__import__('os').system('id')",
        "a" * 10_000,
        "\ud800",
        "list[str]",
        "",
    ]
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | any_text | hostile_strings,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(any_text | hostile_strings, inner, max_size=3)
    ),
    max_leaves=12,
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value inside nested dicts and lists."""
    found = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _paths(item, (*prefix, index))
    return found


@st.composite
def mutated_specs(draw: st.DrawFn) -> str:
    spec = copy.deepcopy(_valid_spec())
    for _ in range(draw(st.integers(1, 4))):
        paths = [p for p in _paths(spec) if p]
        path = draw(st.sampled_from(paths))
        parent: Any = spec
        for step in path[:-1]:
            parent = parent[step]
        action = draw(st.sampled_from(["replace", "hostile", "drop", "add"]))
        if action == "replace":
            parent[path[-1]] = draw(json_values)
        elif action == "hostile":
            parent[path[-1]] = draw(hostile_strings)
        elif action == "drop" and isinstance(parent, dict):
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(any_text | hostile_strings)] = draw(json_values)
    return json.dumps(spec)


def test_the_valid_spec_loads() -> None:
    # The mutations start from a spec that loads: otherwise they would only test the first refusal.
    spec = WorkflowSpec.from_json(json.dumps(_valid_spec()), trust=OPEN)
    assert spec.routes


def test_a_lone_surrogate_is_a_workflow_spec_error() -> None:
    # Escaped in the JSON, it raised UnicodeEncodeError from the hash check (the fuzzer found it).
    with pytest.raises(WorkflowSpecError, match="not valid Unicode"):
        WorkflowSpec.from_json(json.dumps({**_valid_spec(), "name": "\ud800"}), trust=OPEN)


def test_any_text_or_mutated_spec_loads_or_raises_workflow_spec_error() -> None:
    timings = Timings("WorkflowSpec.from_json")
    outcomes = {"loaded": 0, "refused": 0}

    @given(text=mutated_specs() | any_text | json_values.map(json.dumps))
    def check(text: str) -> None:
        modules = set(sys.modules)
        with timings.measure(lambda: f"{len(text)} chars starting {text[:40]!r}"):
            try:
                WorkflowSpec.from_json(text, trust=OPEN)
                outcomes["loaded"] += 1
            except WorkflowSpecError as err:
                assert "Traceback" not in str(err)
                outcomes["refused"] += 1
        assert set(sys.modules) <= modules, sorted(set(sys.modules) - modules)

    _valid_spec()  # built before the first example: its imports are not the loader's
    check()
    print(f"\n[figure] spec loader outcomes: {outcomes}")
    timings.report(BOUND_S)
