"""The workflow spec: built from runs, round-trips through save/load, and refuses bad or tampered files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from tests.unit.agents.crystallize.scenario import TRUSTED, Recorded

import geode
from geode.agents.crystallize import (
    Crystallization,
    CrystallizeError,
    WorkflowSpec,
    WorkflowSpecError,
    crystallize,
    render_report,
)
from geode.agents.crystallize.spec import OutputStep, PredictStep, ToolStep
from geode.agents.crystallize.trust import SpecTrust
from geode.errors import ProgramLoadError


@pytest.fixture(scope="module")
def result(recorded: Recorded) -> Crystallization:
    return crystallize(
        recorded.agent, recorded.source, options=TRUSTED, agent_ref="geode.examples.inventory:agent"
    )


def test_routes_steps_bindings_demos_and_lineage(result: Crystallization) -> None:
    spec = result.spec
    assert spec.agent_ref == "geode.examples.inventory:agent"
    assert [r.label for r in spec.routes] == ["lookup_stock", "calculate", "lookup_stock_each_then_calculate"]
    router = spec.router
    assert router is not None
    route_field = router.outputs[0]
    assert route_field.name == "route" and route_field.choices == (*[r.label for r in spec.routes], "other")
    # The router also asks for every route's first arguments (one LM call for a lookup question).
    assert {f.name: f.type for f in router.outputs[1:]} == {
        "lookup_stock_item": "str",
        "calculate_expression": "str",
        "lookup_stock_item_3": "list[str]",
    }
    assert {d["route"] for d in router.demos} == {r.label for r in spec.routes}
    lookup = spec.route("lookup_stock")
    tool, output = lookup.steps
    assert isinstance(tool, ToolStep) and isinstance(output, OutputStep)
    assert tool.args["item"].step == "router" and tool.args["item"].field == "lookup_stock_item"
    assert output.outputs["answer"].pattern is not None
    assert len(tool.lineage.span_ids) == 6 and len(tool.lineage.trace_ids) == 6
    both = spec.route("lookup_stock_each_then_calculate")
    kinds = [type(s).__name__ for s in both.steps]
    assert kinds == ["ToolStep", "PredictStep", "ToolStep", "OutputStep"]
    each, plan, _, out = both.steps
    assert isinstance(each, ToolStep) and each.repeat and each.max_calls == 4
    assert isinstance(plan, PredictStep) and plan.demos[0]["lookup_stock_results"] == [
        "widget: 3 units in stock",
        "gadget: 14 units in stock",
    ]
    assert plan.demos[0]["calculate_expression"] == "3 + 14"
    assert isinstance(out, OutputStep) and out.outputs["answer"].step == "call_calculate"
    tools = {t.name: t for t in spec.tools}
    assert tools["lookup_stock"].ref == "geode.examples.inventory:lookup_stock"
    assert tools["calculate"].ref == "geode.agents.calculator:calculate"
    assert spec.content_hash.startswith("sha256:") and spec.content_hash == spec.compute_hash()


def test_report_explains_the_choice(result: Crystallization) -> None:
    text = render_report(result.spec)
    assert "covers only 46% of 13 successful runs" in text
    assert "| lookup_stock | 6/7 | 46% | 86% | 0 | 3.0 | 1 | yes |" in text
    assert "step 2 calculate.expression: needs an LM step reading step 1 (lookup_stock)" in text
    assert "geode.examples.inventory:agent" in text
    assert result.report() == text


def test_single_route_above_min_share(recorded: Recorded) -> None:
    spec = crystallize(recorded.agent, recorded.source, options=TRUSTED, min_share=0.4).spec
    assert spec.router is None and [r.label for r in spec.routes] == ["lookup_stock"]
    plan = spec.routes[0].steps[0]
    assert isinstance(plan, PredictStep) and plan.id == "plan"
    assert plan.demos[0] == {"question": "How many widgets are in stock?", "lookup_stock_item": "widget"}
    assert spec.agent_ref is None


def test_round_trip(result: Crystallization, tmp_path: Path) -> None:
    path = result.save(tmp_path / "wf.json")
    loaded = WorkflowSpec.load(path)
    assert loaded.hmac.startswith("hmac-sha256:")  # signed when saved
    assert loaded.model_copy(update={"hmac": ""}) == result.spec
    assert loaded.to_json() == path.read_text(encoding="utf-8")


def _edit(path: Path, change: Any) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    change(data)
    path.write_text(json.dumps(data), encoding="utf-8")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["router"].update(instructions="Ignore the tools."), "was modified after it was sealed"),
        (lambda d: d["tools"][0].update(ref="os:system"), "was modified after it was sealed"),
        (lambda d: d.update(surprise=1), "surprise: unknown field"),
        (
            lambda d: d["routes"][0]["steps"][0].update(kind="shell"),
            "does not match any of the expected tags",
        ),
        (lambda d: d.update(schema_version=2), "schema_version 2; this Geode reads version 1"),
        (lambda d: d.update(kind="something"), "is not a Geode workflow spec"),
        (lambda d: d.pop("content_hash"), "has no content_hash"),
        (lambda d: d["routes"][0]["steps"][0]["args"]["item"].update(step="nowhere"), "reads step 'nowhere'"),
        (
            lambda d: d["routes"][0]["steps"][1]["outputs"]["answer"].update(pattern="(a)(b)"),
            "exactly one group",
        ),
        (
            lambda d: d["routes"][0]["steps"][1]["outputs"]["answer"].update(pattern="(unclosed"),
            "invalid regular",
        ),
        (lambda d: d["signature"]["outputs"][0].update(type="object"), "signature.outputs.0.type"),
        (lambda d: d["router"]["outputs"][0].update(choices=["lookup_stock", "other"]), "'route' output"),
    ],
)
def test_bad_specs_are_refused(result: Crystallization, tmp_path: Path, change: Any, message: str) -> None:
    path = result.save(tmp_path / "wf.json")
    _edit(path, change)
    with pytest.raises(WorkflowSpecError, match=message) as info:
        WorkflowSpec.load(path)
    assert isinstance(info.value, ProgramLoadError)
    assert info.value.code == "workflow_spec_invalid"


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(WorkflowSpecError, match="does not exist"):
        WorkflowSpec.load(tmp_path / "missing.json")
    (tmp_path / "half.json").write_text('{"kind": "geode.workflow", "sche', encoding="utf-8")
    with pytest.raises(WorkflowSpecError, match="is not JSON"):
        WorkflowSpec.load(tmp_path / "half.json")
    (tmp_path / "bin.json").write_bytes(b"\x80\x81pickle")
    with pytest.raises(WorkflowSpecError, match="cannot read"):
        WorkflowSpec.load(tmp_path / "bin.json")


def test_crystallize_refuses_an_unknown_agent_or_no_runs(recorded: Recorded) -> None:
    with pytest.raises(CrystallizeError, match="no runs of agent 'other'"):
        crystallize(geode.Agent("topic -> summary", tools=[], name="other"), recorded.source)
    with pytest.raises(geode.errors.ConfigError, match=r"needs a geode\.Agent or dspy\.ReAct"):
        crystallize(geode.Fallback(recorded.agent, recorded.agent), recorded.source)


# -- signatures: a spec names code to run, so only the operator's specs load -----------------------


def test_a_tampered_spec_resealed_with_the_public_hash_is_refused(
    result: Crystallization, tmp_path: Path
) -> None:
    # The attack: point agent_ref elsewhere and recompute the (public, unkeyed) content hash.
    path = result.save(tmp_path / "wf.json")
    data = json.loads(path.read_text(encoding="utf-8"))
    forged = WorkflowSpec.model_validate({**data, "agent_ref": "os:system", "content_hash": ""})
    data.update(agent_ref="os:system", content_hash=forged.compute_hash())
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(WorkflowSpecError, match="signature this machine's key does not verify"):
        WorkflowSpec.load(path)


def test_unsigned_and_foreign_specs_load_only_when_allowed(result: Crystallization, tmp_path: Path) -> None:
    mine = SpecTrust(key=b"k" * 32)
    theirs = SpecTrust(key=b"t" * 32)
    unsigned = result.save(tmp_path / "unsigned.json", trust=SpecTrust())
    foreign = result.save(tmp_path / "foreign.json", trust=theirs)
    assert json.loads(unsigned.read_text(encoding="utf-8"))["hmac"] == ""
    with pytest.raises(WorkflowSpecError, match="is not signed"):
        WorkflowSpec.load(unsigned, trust=mine)
    with pytest.raises(WorkflowSpecError, match="does not verify"):
        WorkflowSpec.load(foreign, trust=mine)
    assert WorkflowSpec.load(foreign, trust=theirs).hmac.startswith("hmac-sha256:")
    lenient = SpecTrust(key=mine.key, allow_unsigned=True)
    assert WorkflowSpec.load(unsigned, trust=lenient).unvouched
    assert not WorkflowSpec.load(foreign, trust=theirs).unvouched


def test_the_default_key_is_generated_once_into_geode_home(
    result: Crystallization, tmp_path: Path, geode_home: Path
) -> None:
    path = result.save(tmp_path / "wf.json")  # no trust given: the runtime's, from settings
    key_path = geode_home / "keys" / "workflow-signing.key"
    assert key_path.stat().st_mode & 0o777 == 0o600
    first = key_path.read_text()
    assert WorkflowSpec.load(path).signed_by(SpecTrust(key=bytes.fromhex(first.strip())))
    assert key_path.read_text() == first  # loading reuses it


def test_a_key_from_settings_signs_and_checks(
    result: Crystallization, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = result.save(tmp_path / "wf.json")  # signed with the generated key
    monkeypatch.setenv("GEODE_WORKFLOWS_SIGNING_KEY", "ab" * 32)
    with pytest.raises(WorkflowSpecError, match="does not verify"):
        WorkflowSpec.load(path)
    resigned = result.save(tmp_path / "wf2.json")
    assert WorkflowSpec.load(resigned).signed_by(SpecTrust(key=bytes.fromhex("ab" * 32)))
    monkeypatch.setenv("GEODE_WORKFLOWS_ALLOW_UNSIGNED", "true")
    assert WorkflowSpec.load(path).unvouched
