"""``CrystallizedWorkflow``: runs a :class:`~geode.agents.crystallize.spec.WorkflowSpec`, the agent as guard.

The spec's steps run in their fixed order: the router (if any) picks a route, ``predict`` steps are
``dspy.Predict`` calls with the spec's typed signatures and demos, ``tool`` steps call the tools
through :class:`~geode.agents.tools.GuardedTool` (argument validation, timeouts, scrubbed errors, a TOOL
span per call), and the output step binds the outputs. Each step is a child module, so each gets its
own span carrying ``geode.workflow.step`` and its lineage (``geode.workflow.source_spans``).

Whatever the workflow cannot handle goes to the original agent: a step that fails (a tool error or
timeout, an unparseable LM reply, a regex that finds nothing), a router that answers ``other``, or an
empty output. The workflow is a :class:`~geode.agents.fallback.Fallback`, so the choice and its reason
are on its span (``geode.fallback.choice``/``geode.fallback.reason``) and in
:func:`~geode.agents.fallback.fallback_choice`.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, cast

import dspy
import pydantic
from dspy.signatures.signature import make_signature

from geode.agents.crystallize.refs import agent_parts, import_ref, ref_of
from geode.agents.crystallize.shape import STATE_KEY, WorkflowShape, first_passages, reorder_inputs
from geode.agents.crystallize.spec import (
    PATTERN_TIMEOUT_S,
    Binding,
    FieldSpec,
    OutputStep,
    PredictStep,
    RouteSpec,
    ToolStep,
    WorkflowSpec,
    WorkflowSpecError,
    compile_pattern,
    python_type,
)
from geode.agents.crystallize.trust import SpecTrust, current_spec_trust, module_allowed
from geode.agents.fallback import Fallback, Validator
from geode.agents.run import _observation_text
from geode.agents.scrub import scrub
from geode.agents.tools import GuardedTool, guard
from geode.errors import ConfigError, WorkflowGuardError
from geode.traces.vocab import GeodeAttributes

__all__ = ["CrystallizedWorkflow", "WorkflowGuardError", "check_agent_ref", "workflow_route"]

_ROUTE_ATTR = "_geode_workflow_route"
_MAX_OBSERVATION_CHARS = 2000


def workflow_route(prediction: dspy.Prediction) -> str | None:
    """The route a crystallized workflow took for this prediction (``None`` if the agent answered)."""
    route = getattr(prediction, _ROUTE_ATTR, None)
    return route if isinstance(route, str) else None


# -- values ----------------------------------------------------------------------------------------


def _field_type(spec: FieldSpec) -> Any:
    if spec.choices:
        return cast(Any, Literal)[tuple(spec.choices)]
    return python_type(spec.type)


def coerce(value: Any, spec: FieldSpec) -> Any:
    """``value`` as the field's declared type (``"3"`` → ``3`` for an ``int``).

    Raises:
        WorkflowGuardError: It cannot be.
    """
    target = _field_type(spec)
    adapter: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(target)
    try:
        return adapter.validate_python(value)
    except pydantic.ValidationError:
        pass
    if isinstance(value, str):
        try:
            return adapter.validate_json(value)
        except pydantic.ValidationError:
            pass
    raise WorkflowGuardError(f"{spec.name}: {scrub(repr(value), max_chars=80)} is not a valid {spec.type}")


def _empty(value: Any) -> bool:
    return value is None or (isinstance(value, str | list | dict) and not value)


class _Values:
    """The inputs and every finished step's outputs of one run, and binding resolution over them."""

    def __init__(self, inputs: Mapping[str, Any]) -> None:
        self.inputs = dict(inputs)
        self.steps: dict[str, dict[str, Any]] = {}

    def resolve(self, binding: Binding, where: str) -> Any:
        if binding.source == "constant":
            return binding.value
        if binding.source == "input":
            value = self.inputs[str(binding.field)]
            if isinstance(value, str) and binding.transform is not None:
                value = " ".join(value.split())
                if binding.transform == "lower":
                    value = value.casefold()
            return value
        value = self.steps[str(binding.step)][str(binding.field)]
        if binding.pattern is None:
            return value
        text = value if isinstance(value, str) else "\n\n".join(str(v) for v in value or ())
        pattern = compile_pattern(binding.pattern)
        try:
            if binding.all_matches:
                found = pattern.findall(text, timeout=PATTERN_TIMEOUT_S)
                if not found:
                    raise WorkflowGuardError(f"{where}: /{binding.pattern}/ found nothing in {binding.step}")
                return found
            match = pattern.search(text, timeout=PATTERN_TIMEOUT_S)
        except TimeoutError:
            raise WorkflowGuardError(
                f"{where}: /{binding.pattern}/ ran past {PATTERN_TIMEOUT_S} s on {binding.step}'s "
                f"{len(text)} characters"
            ) from None
        if match is None:
            raise WorkflowGuardError(f"{where}: /{binding.pattern}/ found nothing in {binding.step}")
        return match.group(1)


# -- step modules ----------------------------------------------------------------------------------


class _Step(dspy.Module):
    """Common span hooks: the step id as span name, lineage as attributes."""

    step_id: str
    source_spans: tuple[str, ...]

    def geode_span_name(self, inputs: Mapping[str, Any]) -> str:
        """The span is named after the step."""
        return self.step_id

    def geode_span_attributes(self, inputs: Mapping[str, Any], outputs: Any) -> dict[str, Any]:
        """The step id and the spans it was derived from."""
        attributes: dict[str, Any] = {GeodeAttributes.WORKFLOW_STEP: self.step_id}
        if self.source_spans:
            attributes[GeodeAttributes.WORKFLOW_SOURCE_SPANS] = self.source_spans
        return attributes


def _signature(spec: PredictStep) -> type[dspy.Signature]:
    fields: dict[str, tuple[Any, Any]] = {}
    for f in spec.inputs:
        fields[f.name] = (
            _field_type(f),
            dspy.InputField(desc=f.description) if f.description else dspy.InputField(),
        )
    for f in spec.outputs:
        fields[f.name] = (
            _field_type(f),
            dspy.OutputField(desc=f.description) if f.description else dspy.OutputField(),
        )
    return make_signature(fields, spec.instructions)


class PredictStepModule(_Step):
    """A ``predict`` step: one ``dspy.Predict`` call with the spec's signature and demos."""

    def __init__(self, spec: PredictStep) -> None:
        super().__init__()
        self.spec = spec
        self.step_id = spec.id
        self.source_spans = spec.lineage.span_ids
        self.predict = dspy.Predict(_signature(spec))
        self.predict.demos = [dspy.Example(**demo) for demo in spec.demos]

    def read_tool_results_first(self, first: bool, tool_steps: frozenset[str]) -> None:
        """Put the inputs bound to a tool step's result before the others (``False``: the spec's order)."""
        fed = [
            name
            for name, binding in self.spec.bindings.items()
            if binding.source == "step" and binding.step in tool_steps
        ]
        spec_order = [f.name for f in self.spec.inputs]
        order = fed + [n for n in spec_order if n not in fed] if first else spec_order
        # DSPy types the attribute loosely; a Predict always holds a Signature class.
        signature = cast(type[dspy.Signature], self.predict.signature)
        self.predict.signature = reorder_inputs(signature, order)

    def forward(self, **inputs: Any) -> dspy.Prediction:
        """Ask the LM for the step's outputs."""
        return self.predict(**inputs)


class ToolStepModule(_Step):
    """A ``tool`` step: one guarded tool call, or one per value of its list-valued arguments."""

    def __init__(self, spec: ToolStep, tool: GuardedTool, iterated: frozenset[str]) -> None:
        super().__init__()
        self.spec = spec
        self.step_id = spec.id
        self.source_spans = spec.lineage.span_ids
        self.tool = tool
        self.iterated = iterated
        self.passages: int | None = None
        """Keep only the first numbered passages of each result (the workflow's shape)."""

    def _calls(self, args: Mapping[str, Any]) -> list[dict[str, Any]]:
        if not self.spec.repeat or not self.iterated:
            return [dict(args)]
        lists = {k: v for k, v in args.items() if k in self.iterated}
        for name, value in lists.items():
            if not isinstance(value, list):
                raise WorkflowGuardError(f"step {self.step_id}: {name} should be a list of values")
        sizes = {len(v) for v in lists.values()}
        if len(sizes) != 1 or 0 in sizes:
            raise WorkflowGuardError(
                f"step {self.step_id}: no values (or lists of different lengths) to call with"
            )
        count = min(sizes.pop(), self.spec.max_calls)
        shared = {k: v for k, v in args.items() if k not in self.iterated}
        return [{**shared, **{k: v[i] for k, v in lists.items()}} for i in range(count)]

    def forward(self, **args: Any) -> dspy.Prediction:
        """Call the tool; its errors propagate (the workflow's guard hands the input to the agent)."""
        observations = [
            first_passages(_observation_text(self.tool(**call), _MAX_OBSERVATION_CHARS), self.passages)
            for call in self._calls(args)
        ]
        return dspy.Prediction(observation="\n\n".join(observations), observations=observations)


class RouteModule(dspy.Module):
    """The steps of one route, in order."""

    def __init__(self, spec: RouteSpec, steps: Sequence[_Step]) -> None:
        super().__init__()
        self.spec = spec
        self.steps = list(steps)


def _iterated(step: ToolStep, lists: set[tuple[str, str]]) -> frozenset[str]:
    names = set()
    for arg, binding in step.args.items():
        if binding.all_matches or (step.repeat and (str(binding.step), str(binding.field)) in lists):
            names.add(arg)
    return frozenset(names)


class SpecProgram(dspy.Module):
    """The workflow itself, without the guard: router, then the chosen route's steps."""

    def __init__(self, spec: WorkflowSpec, tools: Mapping[str, GuardedTool]) -> None:
        super().__init__()
        self.spec = spec
        self.router = PredictStepModule(spec.router) if spec.router is not None else None
        lists = {
            (s.id, f.name) for s in spec.predict_steps() for f in s.outputs if f.type.startswith("list[")
        }
        self.routes = [
            RouteModule(
                route,
                [
                    PredictStepModule(s)
                    if isinstance(s, PredictStep)
                    else ToolStepModule(s, tools[s.tool], _iterated(s, lists))
                    for s in route.steps
                    if not isinstance(s, OutputStep)
                ],
            )
            for route in spec.routes
        ]
        self.shape = WorkflowShape()

    def set_shape(self, shape: WorkflowShape) -> None:
        """Feed tool results to the LM steps as ``shape`` says (see :mod:`~geode.agents.crystallize.shape`)."""
        tool_steps = frozenset(
            s.id for route in self.spec.routes for s in route.steps if isinstance(s, ToolStep)
        )
        for route in self.routes:
            for step in route.steps:
                if isinstance(step, ToolStepModule):
                    step.passages = shape.passages
                elif isinstance(step, PredictStepModule):
                    step.read_tool_results_first(shape.tool_results_first, tool_steps)
        self.shape = shape

    def geode_span_attributes(self, inputs: Mapping[str, Any], outputs: Any) -> dict[str, Any]:
        """The route taken."""
        route = workflow_route(outputs) if isinstance(outputs, dspy.Prediction) else None
        return {GeodeAttributes.WORKFLOW_ROUTE: route} if route else {}

    def _route(self, values: _Values) -> RouteModule:
        if self.router is None:
            return self.routes[0]
        pred = self.router(**self._bound(self.router.spec.bindings, values, "router"))
        values.steps[self.router.spec.id] = dict(pred.items())
        label = str(pred.get("route") or "").strip()
        for route in self.routes:
            if route.spec.label == label:
                return route
        if self.spec.guard.on_other:
            raise WorkflowGuardError(
                f"the router chose {scrub(label, max_chars=60)!r}: no route fits these inputs"
            )
        return self.routes[0]

    @staticmethod
    def _bound(bindings: Mapping[str, Binding], values: _Values, where: str) -> dict[str, Any]:
        return {name: values.resolve(b, f"{where} {name}") for name, b in bindings.items()}

    def _run(self, values: _Values) -> dspy.Prediction:
        route = self._route(values)
        for step in route.steps:
            if isinstance(step, PredictStepModule):
                pred = step(**self._bound(step.spec.bindings, values, step.step_id))
                values.steps[step.step_id] = dict(pred.items())
            elif isinstance(step, ToolStepModule):
                pred = step(**self._bound(step.spec.args, values, step.step_id))
                values.steps[step.step_id] = dict(pred.items())
        final = route.spec.steps[-1]
        assert isinstance(final, OutputStep)
        outputs: dict[str, Any] = {}
        for field in self.spec.signature.outputs:
            value = coerce(values.resolve(final.outputs[field.name], f"output {field.name}"), field)
            if self.spec.guard.require_outputs and _empty(value):
                raise WorkflowGuardError(f"output {field.name} came out empty")
            outputs[field.name] = value
        prediction = dspy.Prediction(**outputs)
        setattr(prediction, _ROUTE_ATTR, route.spec.label)
        return prediction

    def forward(self, **inputs: Any) -> dspy.Prediction:
        """Run the workflow; anything it cannot handle raises :class:`WorkflowGuardError`."""
        missing = [f.name for f in self.spec.signature.inputs if f.name not in inputs]
        if missing:
            raise WorkflowGuardError(f"missing inputs: {', '.join(missing)}")
        try:
            return self._run(_Values(inputs))
        except WorkflowGuardError:
            raise
        except Exception as err:
            if not self.spec.guard.on_error:
                raise
            first = (str(err).strip().splitlines() or [""])[0]
            text = scrub(f"{type(err).__name__}: {first}", max_chars=200)
            raise WorkflowGuardError(f"a workflow step failed: {text}") from err

    async def aforward(self, **inputs: Any) -> dspy.Prediction:
        """Async :meth:`forward` (the steps run in a worker thread with the caller's context)."""
        return await asyncio.to_thread(self.forward, **inputs)


# -- the guarded workflow --------------------------------------------------------------------------


def _resolve_tools(
    spec: WorkflowSpec, agent: dspy.Module, given: Mapping[str, Any] | None, trust: SpecTrust
) -> dict[str, GuardedTool]:
    _, agent_tools = agent_parts(agent)
    resolved: dict[str, GuardedTool] = {}
    for ref in spec.tools:
        own = agent_tools.get(ref.name)
        if given is not None and ref.name in given:
            source: Any = given[ref.name]
            where = f"tools[{ref.name!r}]"
        elif ref.ref is None or (own is not None and ref.ref == ref_of(own.func)):
            # The agent's own tool: nothing is imported that the agent did not already bring.
            if own is None:
                raise WorkflowSpecError(
                    f"tool {ref.name!r} has no reference and the agent has no tool of that name",
                    hint="pass tools={...} to CrystallizedWorkflow",
                )
            source = own
            where = f"the agent's tool {ref.name!r}"
        elif module_allowed(ref.ref.partition(":")[0], trust.allowed_modules):
            source = import_ref(ref.ref, what=f"tool {ref.name!r}")
            where = ref.ref
        else:
            raise WorkflowSpecError(
                f"tool {ref.name!r} refers to {ref.ref!r}, which is not the agent's tool of that name "
                "nor in a module the operator allows: a spec may not import other code",
                hint="add its module to GEODE_WORKFLOWS_ALLOWED_MODULES, or pass tools={...}",
            )
        try:
            tool = guard(source, timeout_s=ref.timeout_s)
        except ConfigError as err:
            raise WorkflowSpecError(f"tool {ref.name!r} ({where}) is not usable: {err}") from None
        missing = sorted(set(ref.args) - set(tool.args or {}))
        if missing and not tool.has_kwargs:
            raise WorkflowSpecError(
                f"tool {ref.name!r} ({where}) no longer takes argument(s) {', '.join(missing)}",
                hint="re-create the workflow from fresh runs of the agent",
            )
        resolved[ref.name] = tool
    return resolved


def check_agent_ref(spec: WorkflowSpec, trust: SpecTrust | None = None) -> str:
    """The spec's ``agent_ref``, if the trust rules let it be imported.

    A signed spec's agent is the one the operator crystallized, and a spec built in code is the
    code's; a spec read without a valid signature (let in because unsigned specs are allowed) may name
    only an agent in an allowed module.

    Raises:
        ConfigError: The spec names no agent.
        WorkflowSpecError: The reference is neither signed for nor in an allowed module.
    """
    if spec.agent_ref is None:
        raise ConfigError(
            f"workflow {spec.name!r} names no agent_ref; pass agent=... (the agent it falls back to)"
        )
    checker = trust if trust is not None else current_spec_trust()
    module = spec.agent_ref.rpartition(":")[0]
    if spec.unvouched and not module_allowed(module, checker.allowed_modules):
        raise WorkflowSpecError(
            f"workflow {spec.name!r} is not signed with this machine's key, and its agent_ref "
            f"{spec.agent_ref!r} is not in a module the operator allows: a spec may not import other code",
            hint="pass agent=..., add the module to GEODE_WORKFLOWS_ALLOWED_MODULES, or re-create the "
            "spec here with `geode crystallize`",
        )
    return spec.agent_ref


def _load_agent(spec: WorkflowSpec, trust: SpecTrust) -> dspy.Module:
    found = import_ref(check_agent_ref(spec, trust), what="agent_ref")
    if isinstance(found, dspy.Module):
        return found
    if callable(found):
        built = found()
        if isinstance(built, dspy.Module):
            return built
    raise WorkflowSpecError(f"agent_ref {spec.agent_ref!r} is not a dspy.Module (or a factory of one)")


class CrystallizedWorkflow(Fallback):
    """A workflow crystallized from an agent's runs, with the agent as its guard.

    Args:
        spec: The spec, or the path of a spec file (checked strictly; see
            :meth:`WorkflowSpec.load <geode.agents.crystallize.spec.WorkflowSpec.load>`).
        agent: The agent to fall back to; default: imported from the spec's ``agent_ref``
            (``package.module:attribute``).
        tools: Tools by name, overriding the spec's references (e.g. tools built at run time).
        validate: An extra check of the workflow's prediction; failing it sends the input to the agent.
        trust: The key a spec file's signature must verify under and the modules its references may
            import from (:mod:`~geode.agents.crystallize.trust`); default: the process's.

    Raises:
        WorkflowSpecError: The spec file is invalid or not signed with the operator's key, a reference
            it makes is not allowed, or a tool it references cannot be imported or has lost an argument.
        ConfigError: No agent is given and the spec names none.

    Example:
        >>> from geode.agents.crystallize import CrystallizedWorkflow
        >>> CrystallizedWorkflow("missing.json")
        Traceback (most recent call last):
        ...
        geode.agents.crystallize.spec.WorkflowSpecError: workflow spec 'missing.json' does not exist
    """

    def __init__(
        self,
        spec: WorkflowSpec | str | os.PathLike[str],
        *,
        agent: dspy.Module | None = None,
        tools: Mapping[str, Callable[..., Any] | dspy.Tool] | None = None,
        validate: Validator | None = None,
        trust: SpecTrust | None = None,
    ) -> None:
        checker = trust if trust is not None else current_spec_trust()
        loaded = spec if isinstance(spec, WorkflowSpec) else WorkflowSpec.load(Path(spec), trust=checker)
        guard_agent = agent if agent is not None else _load_agent(loaded, checker)
        resolved = _resolve_tools(loaded, guard_agent, tools, checker)
        super().__init__(
            SpecProgram(loaded, resolved), guard_agent, validate=validate, catch=(WorkflowGuardError,)
        )
        self.spec = loaded
        # The agent's own signature is the workflow's interface (geode serve builds its request model from it).
        self.geode_signature: type[dspy.Signature] = agent_parts(guard_agent)[0]

    @property
    def workflow(self) -> SpecProgram:
        """The workflow without its guard."""
        return cast(SpecProgram, self.primary)

    @property
    def agent(self) -> dspy.Module:
        """The agent the workflow falls back to."""
        return self.fallback

    @property
    def shape(self) -> WorkflowShape:
        """How the workflow feeds tool results to its LM steps (the default: as crystallized)."""
        return self.workflow.shape

    def with_shape(self, shape: WorkflowShape) -> CrystallizedWorkflow:
        """A copy of this workflow (its current instructions and demos) with another shape."""
        program = self.deepcopy()
        program.workflow.set_shape(shape)
        return program

    def dump_state(self, json_mode: bool = True) -> dict[str, Any]:
        """DSPy's state of the LM steps, and the shape when it is not the default."""
        state = super().dump_state(json_mode=json_mode)
        if not self.shape.is_default:
            state[STATE_KEY] = self.shape.to_state()
        return state

    def load_state(self, state: dict[str, Any], *, allow_unsafe_lm_state: bool = False) -> None:
        """Load a saved state: the shape first (it orders the LM steps' inputs), then DSPy's state.

        Raises:
            ProgramLoadError: The saved shape is not one Geode writes.
        """
        rest = dict(state)
        shape = WorkflowShape.from_state(rest.pop(STATE_KEY, None))
        # DSPy restores field descriptions by position, so the inputs must be in the saved order first.
        self.workflow.set_shape(shape)
        super().load_state(rest, allow_unsafe_lm_state=allow_unsafe_lm_state)

    def geode_span_name(self, inputs: Mapping[str, Any]) -> str:
        """The workflow's span is named after the spec."""
        return self.spec.name

    def geode_span_attributes(self, inputs: Mapping[str, Any], outputs: Any) -> dict[str, Any]:
        """The fallback choice (see :class:`Fallback`) and the route taken."""
        attributes = super().geode_span_attributes(inputs, outputs)
        route = workflow_route(outputs) if isinstance(outputs, dspy.Prediction) else None
        if route:
            attributes[GeodeAttributes.WORKFLOW_ROUTE] = route
        return attributes
