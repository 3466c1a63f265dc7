"""From an analysis of recorded runs to a :class:`~geode.agents.crystallize.spec.WorkflowSpec`.

Each chosen pattern becomes a route: its tool calls in order, with every argument bound by the rule
the analysis found for it. Arguments that need a language model are asked for as late as their inputs
require and as early as possible otherwise, all at once: one ``predict`` step per *stage* (before the
first tool for arguments that read only the inputs, before tool N for arguments that read tool N-1's
observation), plus one ``answer`` step for outputs no rule yields. With several routes, the router
also asks for every route's first-stage arguments, so a route whose arguments come from the inputs
costs a single LM call in all.
"""

from __future__ import annotations

import datetime as _dt
import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import dspy

from geode.agents.crystallize.patterns import Analysis, Derivation, Pattern
from geode.agents.crystallize.refs import list_of, ref_of, tool_timeout, type_name
from geode.agents.crystallize.spec import (
    OTHER_ROUTE,
    Binding,
    FieldSpec,
    Lineage,
    OutputStep,
    PatternSummary,
    PredictStep,
    RouteSpec,
    SignatureSpec,
    SourceSpec,
    Step,
    ToolRef,
    ToolStep,
    WorkflowSpec,
)
from geode.errors import CrystallizeError

__all__ = ["CrystallizeError", "CrystallizeOptions", "build_spec", "choose_patterns"]

_MAX_LINEAGE = 20
_ROUTER_ID = "router"
_ANSWER_ID = "answer"


@dataclass(frozen=True)
class CrystallizeOptions:
    """Knobs of crystallization.

    Attributes:
        min_share: One route suffices when the dominant pattern covers at least this share of the
            successful runs; below it, a router chooses among the top patterns.
        max_routes: At most this many routes.
        min_route_runs: A pattern needs this many successful runs to become a route.
        success_threshold: A scored run succeeds when its score is at least this.
        unscored_ok: A completed run nobody scored counts as a success. Off by default: such a run is
            unknown (it may have answered wrongly), so only runs scored at least ``success_threshold``
            (by feedback, a metric on a labelled dataset, or an evaluation) are learned from.
        agreement: Share of a pattern's runs a derivation rule must reproduce.
        min_rule_runs: Runs a rule other than an input copy must hold in.
        max_demos: Demos per LM step (router: per route, at most 2).
        max_demo_chars: Longer observations are cut in demos.
        arg_evidence: ``completed``: a tool argument the successful runs leave to an LM step becomes a
            copy of an input when the pattern's completed runs, right answers or wrong, copy it (how an
            agent forms an argument does not depend on whether its final answer came out right). Off
            (``successful``) by default; patterns, outputs and demos come from successful runs either way.
    """

    min_share: float = 0.6
    max_routes: int = 3
    min_route_runs: int = 2
    success_threshold: float = 0.5
    unscored_ok: bool = False
    agreement: float = 0.8
    min_rule_runs: int = 2
    max_demos: int = 3
    max_demo_chars: int = 600
    arg_evidence: Literal["successful", "completed"] = "successful"

    def __post_init__(self) -> None:
        if not 0.0 < self.min_share <= 1.0:
            raise CrystallizeError(f"min_share must be in (0, 1], got {self.min_share}")
        if self.max_routes < 1 or self.min_route_runs < 1 or self.max_demos < 0:
            raise CrystallizeError("max_routes and min_route_runs must be at least 1, max_demos at least 0")


# -- choosing routes -------------------------------------------------------------------------------


def choose_patterns(analysis: Analysis, options: CrystallizeOptions) -> tuple[list[Pattern], str]:
    """The patterns that become routes, and a sentence saying why.

    Raises:
        CrystallizeError: No run succeeded, or no pattern has enough runs.
    """
    if analysis.successful == 0:
        reasons = ", ".join(f"{n} {why}" for why, n in sorted(analysis.failures.items())) or "none recorded"
        raise CrystallizeError(
            f"none of the {analysis.runs} recorded runs succeeded ({reasons})",
            hint=(
                "score the runs: give feedback (rt.feedback, POST /feedback, Phoenix annotations), or "
                "--labels DATA --metric METRIC to score them against expected outputs; --trust-unscored "
                "learns from completed runs nobody scored"
                if analysis.failures.get("unscored")
                else "record more runs of a working agent, or lower --success-threshold if scores are strict"
            ),
        )
    eligible = [p for p in analysis.patterns if len(p.runs) >= options.min_route_runs]
    if not eligible:
        raise CrystallizeError(
            f"no tool pattern occurs in {options.min_route_runs} or more successful runs "
            f"({analysis.successful} successful runs, {len(analysis.patterns)} patterns)",
            hint="record more runs, or lower --min-route-runs",
        )
    dominant = analysis.patterns[0]
    share = f"{dominant.share:.0%} of {analysis.successful} successful runs"
    if dominant in eligible and dominant.share >= options.min_share:
        return [dominant], (
            f"pattern {dominant.label!r} covers {share} (at least min_share {options.min_share:.0%}): "
            "one fixed route; inputs it cannot handle go to the agent"
        )
    chosen = eligible[: options.max_routes]
    covered = sum(p.share for p in chosen)
    return chosen, (
        f"the most common pattern {dominant.label!r} covers only {share} (below min_share "
        f"{options.min_share:.0%}): a router over {len(chosen)} pattern(s) covering {covered:.0%}; "
        f"it answers {OTHER_ROUTE!r} for the rest, which go to the agent"
    )


# -- building routes -------------------------------------------------------------------------------


@dataclass
class _Context:
    signature: type[dspy.Signature]
    inputs: tuple[FieldSpec, ...]
    outputs: tuple[FieldSpec, ...]
    tools: Mapping[str, dspy.Tool]
    options: CrystallizeOptions


@dataclass
class _LMField:
    """A value an LM step must produce, with the recorded value per run."""

    spec: FieldSpec
    values: list[Any]
    """Per run of the pattern (``None`` where the run lacks it)."""
    reads: set[int]
    """Steps whose observations it needs."""


@dataclass
class _Plan:
    """A route before its LM fields are named for good (the router may rename shared ones)."""

    pattern: Pattern
    tool_ids: list[str]
    obs_fields: list[FieldSpec]
    stages: dict[int, list[_LMField]] = field(default_factory=dict)
    arg_sources: dict[tuple[int, str], tuple[Derivation, _LMField | None]] = field(default_factory=dict)
    output_sources: dict[str, tuple[Derivation, _LMField | None]] = field(default_factory=dict)


def _fields(signature_fields: Mapping[str, Any]) -> tuple[FieldSpec, ...]:
    found = []
    for name, info in signature_fields.items():
        kind, choices = type_name(info.annotation)
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        desc = str(extra.get("desc") or "")
        if desc == f"${{{name}}}":
            desc = ""
        found.append(FieldSpec(name=name, type=kind, description=desc, choices=choices))  # type: ignore[arg-type]
    return tuple(found)


def _arg_field(ctx: _Context, pattern: Pattern, index: int, arg: str, name: str) -> FieldSpec:
    step = pattern.steps[index]
    tool = ctx.tools.get(step.tool)
    annotation = (tool.arg_types or {}).get(arg, str) if tool is not None else str
    kind, choices = type_name(annotation)
    schema = (tool.args or {}).get(arg, {}) if tool is not None else {}
    parts = [str(schema.get("description") or "").strip()]
    tool_desc = " ".join(str(getattr(tool, "desc", "") or "").split())[:200]
    parts.append(
        f"The `{arg}` argument of the tool `{step.tool}`" + (f" ({tool_desc})." if tool_desc else ".")
    )
    if step.repeated:
        kind = list_of(kind)
        choices = None
        parts.append(
            f"A list: the tool is called once per value (the recorded runs made 1 to {step.max_calls} calls)."
        )
    return FieldSpec(name=name, type=kind, description=" ".join(p for p in parts if p), choices=choices)  # type: ignore[arg-type]


def _plan(ctx: _Context, pattern: Pattern) -> _Plan:
    counts = Counter(pattern.tools)
    tool_ids: list[str] = []
    obs_fields: list[FieldSpec] = []
    for index, step in enumerate(pattern.steps):
        suffix = f"_{index + 1}" if counts[step.tool] > 1 else ""
        tool_ids.append(f"call_{step.tool}{suffix}")
        noun = "results" if step.repeated else "result"
        obs_fields.append(
            FieldSpec(
                name=f"{step.tool}{suffix}_{noun}",
                type="list[str]" if step.repeated else "str",
                description=f"What the tool `{step.tool}` returned"
                + (" (one entry per call)." if step.repeated else "."),
            )
        )
    plan = _Plan(pattern, tool_ids, obs_fields)
    last = len(pattern.steps)
    for index, step in enumerate(pattern.steps):
        suffix = f"_{index + 1}" if counts[step.tool] > 1 else ""
        for arg, derivation in step.args.items():
            if derivation.kind != "lm":
                plan.arg_sources[(index, arg)] = (derivation, None)
                continue
            values = []
            for calls in step.calls:
                found = [c.args[arg] for c in calls if arg in c.args]
                values.append((found if step.repeated else found[0]) if found else None)
            lm = _LMField(
                _arg_field(ctx, pattern, index, arg, f"{step.tool}{suffix}_{arg}"),
                values,
                set(derivation.depends_on),
            )
            stage = max(derivation.depends_on) + 1 if derivation.depends_on else 0
            plan.stages.setdefault(stage, []).append(lm)
            plan.arg_sources[(index, arg)] = (derivation, lm)
    for out in ctx.outputs:
        derivation = pattern.outputs.get(out.name) or Derivation("lm", 0, len(pattern.runs))
        if derivation.kind != "lm":
            plan.output_sources[out.name] = (derivation, None)
            continue
        lm = _LMField(out, [run.outputs.get(out.name) for run in pattern.runs], set(range(last)))
        plan.stages.setdefault(last, []).append(lm)
        plan.output_sources[out.name] = (derivation, lm)
    return plan


def _demo_rows(pattern: Pattern, limit: int) -> list[int]:
    """Up to ``limit`` run indexes with distinct inputs, newest runs last."""
    if limit <= 0:
        return []
    seen: set[str] = set()
    chosen: list[int] = []
    for index, run in enumerate(pattern.runs):
        key = json.dumps(run.inputs, sort_keys=True, default=str)
        if key in seen:
            continue
        seen.add(key)
        chosen.append(index)
        if len(chosen) >= limit:
            break
    return chosen


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + f"... [cut {len(text) - limit} characters]"


def _obs_value(plan: _Plan, step: int, row: int, limit: int) -> Any:
    calls = plan.pattern.steps[step].calls[row]
    if plan.pattern.steps[step].repeated:
        return [_cut(c.observation or "", limit) for c in calls]
    return _cut(calls[0].observation or "", limit) if calls else ""


def _demos(
    ctx: _Context, plan: _Plan, fields: Sequence[_LMField], reads: Sequence[int], limit: int
) -> list[dict[str, Any]]:
    demos = []
    for row in _demo_rows(plan.pattern, limit):
        run = plan.pattern.runs[row]
        demo: dict[str, Any] = {f.name: run.inputs.get(f.name) for f in ctx.inputs}
        for step in reads:
            demo[plan.obs_fields[step].name] = _obs_value(plan, step, row, ctx.options.max_demo_chars)
        for lm in fields:
            if lm.values[row] is not None:
                demo[lm.spec.name] = lm.values[row]
        demos.append(demo)
    return demos


def _lineage(pattern: Pattern, spans: Sequence[str] | None = None) -> Lineage:
    runs = pattern.runs[-_MAX_LINEAGE:]
    ids = list(spans) if spans is not None else [r.span_id for r in runs]
    return Lineage(trace_ids=tuple(r.trace_id for r in runs), span_ids=tuple(ids[-_MAX_LINEAGE:]))


def _instructions(ctx: _Context, task: str) -> str:
    base = (ctx.signature.instructions or "").strip()
    return f"{base}\n\n{task}" if base else task


def _binding(
    plan: _Plan, derivation: Derivation, lm: _LMField | None, owner: Mapping[str, str], repeated: bool
) -> Binding:
    if lm is not None:
        return Binding(source="step", step=owner[lm.spec.name], field=lm.spec.name)
    if derivation.kind == "input":
        return Binding(source="input", field=derivation.field, transform=derivation.transform)
    if derivation.kind == "constant":
        return Binding(source="constant", value=derivation.value)
    step_id = plan.tool_ids[derivation.step or 0]
    if derivation.kind == "observation":
        return Binding(source="step", step=step_id, field="observation")
    return Binding(
        source="step", step=step_id, field="observation", pattern=derivation.pattern, all_matches=repeated
    )


def _predict_id(stage: int, last: int) -> str:
    if stage == last:
        return _ANSWER_ID
    return "plan" if stage == 0 else f"plan_{stage + 1}"


def _route(ctx: _Context, plan: _Plan, routed: bool) -> RouteSpec:
    """Materialise a plan; with a router, stage 0's fields live on the router."""
    pattern = plan.pattern
    last = len(pattern.steps)
    owner: dict[str, str] = {}
    steps: list[Step] = []
    for stage in range(last + 1):
        fields = plan.stages.get(stage, [])
        if fields and routed and stage == 0:
            for lm in fields:
                owner[lm.spec.name] = _ROUTER_ID
        elif fields:
            reads = sorted(set().union(*(lm.reads for lm in fields)))
            step_id = _predict_id(stage, last)
            for lm in fields:
                owner[lm.spec.name] = step_id
            task = (
                "Produce the final outputs from the tool results."
                if stage == last
                else "Give the arguments for the next tool call(s) of a fixed workflow."
            )
            steps.append(
                PredictStep(
                    id=step_id,
                    instructions=_instructions(ctx, task),
                    inputs=(*ctx.inputs, *(plan.obs_fields[i] for i in reads)),
                    bindings={
                        **{f.name: Binding(source="input", field=f.name) for f in ctx.inputs},
                        **{
                            plan.obs_fields[i].name: Binding(
                                source="step",
                                step=plan.tool_ids[i],
                                field="observations" if pattern.steps[i].repeated else "observation",
                            )
                            for i in reads
                        },
                    },
                    outputs=tuple(lm.spec for lm in fields),
                    demos=tuple(_demos(ctx, plan, fields, reads, ctx.options.max_demos)),
                    lineage=_lineage(pattern),
                )
            )
        if stage == last:
            break
        step = pattern.steps[stage]
        spans = [c.span_id for calls in step.calls for c in calls]
        args = {}
        for arg in step.args:
            derivation, lm = plan.arg_sources[(stage, arg)]
            args[arg] = _binding(plan, derivation, lm, owner, step.repeated)
        steps.append(
            ToolStep(
                id=plan.tool_ids[stage],
                tool=step.tool,
                args=args,
                repeat=step.repeated,
                max_calls=min(20, max(step.max_calls * 2, 1)) if step.repeated else 1,
                lineage=_lineage(pattern, spans),
            )
        )
    outputs = {
        name: _binding(plan, derivation, lm, owner, False)
        for name, (derivation, lm) in plan.output_sources.items()
    }
    steps.append(OutputStep(outputs=outputs, lineage=_lineage(pattern)))
    return RouteSpec(label=pattern.label, tools=pattern.tools, steps=tuple(steps))


def _describe_route(pattern: Pattern) -> str:
    if not pattern.steps:
        return "answer directly, without tools"
    calls = [f"call {s.tool}" + (" once per value" if s.repeated else "") for s in pattern.steps]
    return ", then ".join(calls) + ", then answer"


def _router(ctx: _Context, plans: Sequence[_Plan]) -> PredictStep:
    """One LM call choosing the route and giving each route's first-stage values.

    Fields of different routes that share a name and a type are shared; on a clash of types (or with
    an input's name) the later route's field is renamed (its plan is updated in place).
    """
    labels = [p.pattern.label for p in plans]
    route_field = FieldSpec(
        name="route",
        type="str",
        choices=(*labels, OTHER_ROUTE),
        description=f"Which fixed route handles these inputs, or '{OTHER_ROUTE}' if none fits.",
    )
    taken = {"route", *(f.name for f in ctx.inputs)}
    specs: dict[str, FieldSpec] = {}
    members: dict[str, list[str]] = {}
    for number, plan in enumerate(plans, start=1):
        for lm in plan.stages.get(0, []):
            spec = lm.spec
            existing = specs.get(spec.name)
            if spec.name in taken or (existing is not None and existing.type != spec.type):
                spec = spec.model_copy(update={"name": f"{spec.name}_{number}"})
            lm.spec = spec
            specs.setdefault(spec.name, spec)
            members.setdefault(spec.name, []).append(plan.pattern.label)
    outputs = [route_field]
    for name, spec in specs.items():
        which = ", ".join(repr(label) for label in members[name])
        note = f"Only for route {which}; otherwise leave it empty."
        outputs.append(spec.model_copy(update={"description": f"{spec.description} {note}".strip()}))
    routes = "\n".join(f"- '{p.pattern.label}': {_describe_route(p.pattern)}." for p in plans)
    task = (
        "You are the first step of a fixed workflow. Choose the route that handles these inputs:\n"
        f"{routes}\n- '{OTHER_ROUTE}': none of the above fits.\n"
        "Also fill in the fields of the route you choose."
    )
    demos: list[dict[str, Any]] = []
    per_route = max(1, min(2, ctx.options.max_demos))
    for plan in plans:
        fields = plan.stages.get(0, [])
        for row in _demo_rows(plan.pattern, per_route):
            run = plan.pattern.runs[row]
            demo: dict[str, Any] = {f.name: run.inputs.get(f.name) for f in ctx.inputs}
            demo["route"] = plan.pattern.label
            for lm in fields:
                if lm.values[row] is not None:
                    demo[lm.spec.name] = lm.values[row]
            demos.append(demo)
    all_runs = sorted((r for p in plans for r in p.pattern.runs), key=lambda r: r.started)[-_MAX_LINEAGE:]
    return PredictStep(
        id=_ROUTER_ID,
        instructions=_instructions(ctx, task),
        inputs=ctx.inputs,
        bindings={f.name: Binding(source="input", field=f.name) for f in ctx.inputs},
        outputs=tuple(outputs),
        demos=tuple(demos),
        lineage=Lineage(
            trace_ids=tuple(r.trace_id for r in all_runs), span_ids=tuple(r.span_id for r in all_runs)
        ),
    )


def _summaries(analysis: Analysis, chosen: Sequence[Pattern]) -> tuple[PatternSummary, ...]:
    found = []
    for pattern in analysis.patterns:
        names = [s.tool for s in pattern.steps]
        derivations = {
            f"step {s.index + 1} {s.tool}.{arg}": d.describe(names)
            for s in pattern.steps
            for arg, d in s.args.items()
        }
        derivations.update({f"output {name}": d.describe(names) for name, d in pattern.outputs.items()})
        found.append(
            PatternSummary(
                label=pattern.label,
                tools=pattern.tools,
                runs=len(pattern.runs),
                attempts=pattern.attempts,
                share=round(pattern.share, 4),
                success_rate=round(pattern.success_rate, 4),
                retried=pattern.retried,
                lm_calls=round(sum(r.lm_calls for r in pattern.runs) / max(1, len(pattern.runs)), 2),
                chosen=pattern in chosen,
                derivations=derivations,
            )
        )
    return tuple(found)


def build_spec(
    analysis: Analysis,
    signature: type[dspy.Signature],
    tools: Mapping[str, dspy.Tool],
    *,
    name: str,
    agent_ref: str | None,
    source: str,
    program: str | None = None,
    options: CrystallizeOptions | None = None,
) -> WorkflowSpec:
    """Turn an analysis into a sealed workflow spec.

    Args:
        analysis: Patterns of the agent's runs (see :func:`~geode.agents.crystallize.patterns.analyze`).
        signature: The agent's signature (the workflow's inputs and outputs).
        tools: The agent's tools by name.
        name: The workflow's name.
        agent_ref: A program reference to the agent (the guard); ``None`` to pass the agent when loading.
        source: Where the runs were read, for the record.
        program: The program name the runs were filtered by.
        options: Crystallization settings.

    Raises:
        CrystallizeError: No route can be built (see :func:`choose_patterns`), or a pattern calls a
            tool the agent does not have.
    """
    opts = options or CrystallizeOptions()
    chosen, decision = choose_patterns(analysis, opts)
    ctx = _Context(signature, _fields(signature.input_fields), _fields(signature.output_fields), tools, opts)
    used = sorted({tool for p in chosen for tool in p.tools})
    missing = [t for t in used if t not in tools]
    if missing:
        raise CrystallizeError(
            f"the runs call tool(s) {', '.join(missing)} that the agent does not have",
            hint="crystallize the agent whose runs were recorded",
        )
    plans = [_plan(ctx, pattern) for pattern in chosen]
    router = _router(ctx, plans) if len(plans) > 1 else None
    routes = tuple(_route(ctx, plan, router is not None) for plan in plans)
    tool_refs = tuple(
        ToolRef(
            name=tool,
            ref=ref_of(tools[tool].func),
            timeout_s=tool_timeout(tools[tool]),
            args=tuple(sorted((tools[tool].args or {}).keys())),
        )
        for tool in used
    )
    spec = WorkflowSpec(
        name=name,
        agent_ref=agent_ref,
        signature=SignatureSpec(
            instructions=signature.instructions or "", inputs=ctx.inputs, outputs=ctx.outputs
        ),
        tools=tool_refs,
        router=router,
        routes=routes,
        source=SourceSpec(
            description=source,
            program=program,
            runs=analysis.runs,
            successful=analysis.successful,
            failures=dict(analysis.failures),
            learned_from=dict(analysis.learned_from),
            unscored_ok=analysis.unscored_ok,
            min_share=opts.min_share,
            success_threshold=analysis.success_threshold,
            agreement=analysis.agreement,
            decision=decision,
            patterns=_summaries(analysis, chosen),
            created_at=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        ),
    )
    # Hashed now (reports quote it); signed when saved, with the key in force then.
    return spec.model_copy(update={"content_hash": spec.compute_hash()})
