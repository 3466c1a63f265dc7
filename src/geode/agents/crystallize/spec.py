"""The declarative workflow spec: what a crystallized workflow does, as versioned, hashed JSON.

A :class:`WorkflowSpec` names the agent it replaces (``agent_ref``, which also answers whatever the
workflow cannot), the tools (``module:attr`` references, or the agent's own tools by name), an
optional router and one route per tool pattern. A route is a fixed list of steps:

- ``predict``: one LM call (a ``dspy.Predict`` with a typed signature and demos taken from the
  recorded runs) producing the arguments the rules cannot;
- ``tool``: one tool call (or one per value, for a repeated step), each argument bound to an input,
  a constant, an earlier observation (whole, or a regex extraction) or a predict step's output;
- ``output``: the agent's outputs, each bound the same way.

Loading is strict: unknown fields, dangling references, unknown type names, a regex without exactly one
group, a content hash that does not match the content, or a signature that the operator's key does not
verify (:mod:`~geode.agents.crystallize.trust`) are refused with a :class:`WorkflowSpecError`. Types
come from a fixed list and regular expressions are data, run with a time limit
(:data:`PATTERN_TIMEOUT_S`); the agent and tools a spec names are imported only when the trust rules
allow it.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Final, Literal

import pydantic
import regex
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from geode.agents.crystallize.trust import SpecTrust, current_spec_trust
from geode.errors import WorkflowSpecError

__all__ = [
    "PATTERN_TIMEOUT_S",
    "SCHEMA_VERSION",
    "TYPE_NAMES",
    "Binding",
    "FieldSpec",
    "GuardSpec",
    "Lineage",
    "OutputStep",
    "PatternSummary",
    "PredictStep",
    "RouteSpec",
    "SignatureSpec",
    "SourceSpec",
    "Step",
    "ToolRef",
    "ToolStep",
    "WorkflowSpec",
    "WorkflowSpecError",
    "compile_pattern",
    "python_type",
]

SCHEMA_VERSION: Final = 1
KIND: Final = "geode.workflow"
OTHER_ROUTE: Final = "other"
"""The router's answer for inputs no route fits; the guard sends them to the agent."""

TypeName = Literal[
    "str", "int", "float", "bool", "list[str]", "list[int]", "list[float]", "dict", "list[dict]"
]
TYPE_NAMES: Final[dict[str, Any]] = {
    "str": str,
    "int": int,
    "float": float,
    "bool": bool,
    "list[str]": list[str],
    "list[int]": list[int],
    "list[float]": list[float],
    "dict": dict[str, Any],
    "list[dict]": list[dict[str, Any]],
}
"""The field types a spec may use, by name (a spec never names arbitrary Python types)."""

_IDENT = r"^[A-Za-z_][A-Za-z0-9_]*$"
_REF = r"^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_.]*$"
_MAX_PATTERN = 500
PATTERN_TIMEOUT_S: Final = 0.25
"""How long one of a spec's regular expressions may run on one text; past it the step fails (and the
workflow's guard hands the input to the agent). A spec's patterns are learned from data, and a spec may
come from elsewhere: a pattern that backtracks badly must cost a bounded time, not freeze the server."""


def compile_pattern(pattern: str) -> regex.Pattern[str]:
    """A spec's regular expression, compiled with the ``regex`` module (its searches take ``timeout=``).

    Raises:
        regex.error: The pattern is invalid.
    """
    return regex.compile(pattern)


def python_type(name: str) -> Any:
    """The Python type of a spec type name (``"list[str]"`` → ``list[str]``)."""
    return TYPE_NAMES[name]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Lineage(_Model):
    """Where a step came from: the recorded runs (traces) and spans it was derived from."""

    trace_ids: tuple[str, ...] = ()
    span_ids: tuple[str, ...] = ()


class FieldSpec(_Model):
    """A typed field of a signature."""

    name: str = Field(pattern=_IDENT)
    type: TypeName = "str"
    description: str = ""
    choices: tuple[str, ...] | None = None
    """For a ``str`` field: the only values allowed (an enum for the LM)."""


class Binding(_Model):
    """Where a value comes from.

    - ``input``: the workflow input ``field`` (``transform``: ``strip`` or ``lower``);
    - ``constant``: ``value``;
    - ``step``: output ``field`` of an earlier step (a tool step's outputs are ``observation``, the text,
      and ``observations``, one text per call); with
      ``pattern``, the regex's group instead of the whole text (``all_matches`` for every match).
    """

    source: Literal["input", "constant", "step"]
    field: str | None = None
    step: str | None = None
    value: Any = None
    transform: Literal["strip", "lower"] | None = None
    pattern: str | None = Field(default=None, max_length=_MAX_PATTERN)
    all_matches: bool = False

    @pydantic.model_validator(mode="after")
    def _check(self) -> Binding:
        if self.source == "input" and not self.field:
            raise ValueError("an input binding needs 'field'")
        if self.source == "step" and not (self.step and self.field):
            raise ValueError("a step binding needs 'step' and 'field'")
        if self.pattern is not None:
            try:
                groups = compile_pattern(self.pattern).groups
            except regex.error as err:
                raise ValueError(f"invalid regular expression {self.pattern!r}: {err}") from None
            if groups != 1:
                raise ValueError(f"the regular expression {self.pattern!r} must have exactly one group")
        return self


class PredictStep(_Model):
    """One LM call: a typed signature whose inputs are bound, with demos from the recorded runs."""

    kind: Literal["predict"] = "predict"
    id: str = Field(pattern=_IDENT)
    instructions: str
    inputs: tuple[FieldSpec, ...]
    bindings: dict[str, Binding]
    """Per input field, where its value comes from."""
    outputs: tuple[FieldSpec, ...] = Field(min_length=1)
    demos: tuple[dict[str, Any], ...] = ()
    lineage: Lineage = Lineage()


class ToolStep(_Model):
    """One tool call (or one per value of its list-valued arguments, when ``repeat``)."""

    kind: Literal["tool"] = "tool"
    id: str = Field(pattern=_IDENT)
    tool: str = Field(pattern=_IDENT)
    args: dict[str, Binding]
    repeat: bool = False
    """Call the tool once per element of the list-valued arguments (zipped; others are shared)."""
    max_calls: int = Field(default=1, ge=1, le=20)
    lineage: Lineage = Lineage()


class OutputStep(_Model):
    """The workflow's outputs, each bound to an input, a constant or a step's output."""

    kind: Literal["output"] = "output"
    id: str = Field(default="output", pattern=_IDENT)
    outputs: dict[str, Binding]
    lineage: Lineage = Lineage()


Step = Annotated[PredictStep | ToolStep | OutputStep, Field(discriminator="kind")]


class RouteSpec(_Model):
    """One tool pattern, as a fixed sequence of steps ending in an output step."""

    label: str = Field(pattern=_IDENT)
    tools: tuple[str, ...]
    steps: tuple[Step, ...] = Field(min_length=1)


class ToolRef(_Model):
    """A tool the workflow calls: imported from ``ref``, or (``ref`` null) the agent's tool of that name."""

    name: str = Field(pattern=_IDENT)
    ref: str | None = Field(default=None, pattern=_REF)
    timeout_s: float | None = Field(default=30.0, gt=0)
    args: tuple[str, ...] = ()
    """The argument names the tool took when the spec was made (checked when it is loaded)."""


class SignatureSpec(_Model):
    """The agent's signature: what the workflow takes and returns."""

    instructions: str = ""
    inputs: tuple[FieldSpec, ...] = Field(min_length=1)
    outputs: tuple[FieldSpec, ...] = Field(min_length=1)


class GuardSpec(_Model):
    """When the workflow hands an input to the agent instead of answering itself."""

    on_error: bool = True
    """A step raised (a tool failed or timed out, an LM reply did not parse, a regex found nothing)."""
    on_other: bool = True
    """The router said no route fits."""
    require_outputs: bool = True
    """An output came out empty."""


class PatternSummary(_Model):
    """A pattern found in the runs, for the report (chosen or not)."""

    label: str
    tools: tuple[str, ...]
    runs: int
    attempts: int
    share: float
    success_rate: float
    retried: int
    lm_calls: float = 0.0
    """The agent's mean LM calls per run on this pattern."""
    chosen: bool
    derivations: dict[str, str]
    """``"step 1 lookup_stock.item"`` or ``"output answer"`` → how it is derived."""


class SourceSpec(_Model):
    """What the spec was derived from, and the settings used."""

    description: str
    program: str | None = None
    runs: int
    successful: int
    failures: dict[str, int] = {}
    learned_from: dict[str, int] = {}
    """Successful runs by how they are known to be good: ``feedback``, ``metric``, ``eval``, ``unscored``."""
    unscored_ok: bool = False
    """Whether completed runs nobody scored were trusted as successes."""
    min_share: float
    success_threshold: float
    agreement: float
    decision: str
    """Why these routes: the dominant pattern's share against ``min_share``."""
    patterns: tuple[PatternSummary, ...] = ()
    created_at: str


class WorkflowSpec(_Model):
    """A crystallized workflow: routes of fixed steps, a router, the agent as guard, and provenance."""

    schema_version: Literal[1] = SCHEMA_VERSION
    kind: Literal["geode.workflow"] = KIND
    name: str
    agent_ref: str | None = None
    """The agent this workflow replaces and falls back to (a program reference)."""
    signature: SignatureSpec
    tools: tuple[ToolRef, ...] = ()
    router: PredictStep | None = None
    """Chooses the route (its ``route`` output); may also produce the first arguments of every route."""
    routes: tuple[RouteSpec, ...] = Field(min_length=1)
    guard: GuardSpec = GuardSpec()
    source: SourceSpec
    content_hash: str = ""
    """``sha256:`` of the canonical JSON of everything but itself and ``hmac``; checked on load."""
    hmac: str = ""
    """``hmac-sha256:`` of the same JSON under the operator's key (:class:`SpecTrust`); checked on load."""
    _unvouched: bool = PrivateAttr(default=False)
    # Read from text whose signature did not verify (let in by `allow_unsigned`): its agent_ref may
    # then name only an allowed module. Specs built in code, or loaded signed, are vouched for.

    @property
    def unvouched(self) -> bool:
        """Whether this spec was read from text without a valid signature (``allow_unsigned``)."""
        return self._unvouched

    @pydantic.model_validator(mode="after")
    def _check_references(self) -> WorkflowSpec:
        problems = list(_reference_problems(self))
        if problems:
            raise ValueError("; ".join(problems))
        return self

    # -- hashing and files -------------------------------------------------------------------------

    def _canonical(self) -> bytes:
        data = self.model_dump(mode="json", exclude={"content_hash", "hmac"})
        return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")

    def compute_hash(self) -> str:
        """The content hash of this spec (everything but ``content_hash`` and ``hmac``)."""
        return "sha256:" + hashlib.sha256(self._canonical()).hexdigest()

    def sealed(self, trust: SpecTrust | None = None) -> WorkflowSpec:
        """This spec with its content hash and signature filled in.

        Args:
            trust: Whose key signs it; default: the process's (:func:`current_spec_trust`). Without a
                key the signature stays empty.
        """
        signer = trust if trust is not None else current_spec_trust()
        return self.model_copy(
            update={"content_hash": self.compute_hash(), "hmac": signer.sign(self._canonical())}
        )

    def signed_by(self, trust: SpecTrust) -> bool:
        """Whether this spec's ``hmac`` verifies under ``trust``'s key."""
        return trust.verifies(self._canonical(), self.hmac)

    def to_json(self, trust: SpecTrust | None = None) -> str:
        """The sealed (hashed and signed, see :meth:`sealed`) spec as indented JSON."""
        data = self.sealed(trust).model_dump(mode="json")
        return json.dumps(data, indent=2, ensure_ascii=False) + "\n"

    def save(self, path: str | os.PathLike[str], *, trust: SpecTrust | None = None) -> Path:
        """Write the sealed (hashed and signed) spec to ``path`` atomically; returns the path."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        text = self.to_json(trust)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return target

    @classmethod
    def from_json(
        cls, text: str, *, where: str = "workflow spec", trust: SpecTrust | None = None
    ) -> WorkflowSpec:
        """Parse and check a spec.

        Args:
            text: The spec's JSON.
            where: What to call it in messages.
            trust: The key its signature must verify under, and whether unsigned specs are allowed;
                default: the process's (:func:`current_spec_trust`).

        Raises:
            WorkflowSpecError: Not JSON, not a workflow spec, an unsupported schema version, a field
                that is unknown, missing or invalid, a dangling reference, a hash mismatch, or a
                signature that is missing or does not verify (unless unsigned specs are allowed).
        """
        try:
            data = json.loads(text)
        except ValueError as err:
            raise WorkflowSpecError(f"{where} is not JSON: {err}") from None
        if not isinstance(data, dict) or data.get("kind") != KIND:
            raise WorkflowSpecError(
                f'{where} is not a Geode workflow spec (expected "kind": "{KIND}")',
                hint="create one with `geode crystallize`",
            )
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise WorkflowSpecError(
                f"{where} has schema_version {version!r}; this Geode reads version {SCHEMA_VERSION}",
                hint="re-create it with `geode crystallize` from this Geode version",
            )
        try:
            spec = cls.model_validate(data)
        except pydantic.ValidationError as err:
            raise WorkflowSpecError(f"{where} is invalid: {_problems(err)}") from None
        if not spec.content_hash:
            raise WorkflowSpecError(
                f"{where} has no content_hash", hint="save specs with WorkflowSpec.save (it seals them)"
            )
        try:
            actual = spec.compute_hash()
        except UnicodeError:  # JSON may escape a lone surrogate ("\ud800"), which has no UTF-8 form
            raise WorkflowSpecError(f"{where} holds text that is not valid Unicode") from None
        if actual != spec.content_hash:
            raise WorkflowSpecError(
                f"{where} was modified after it was sealed (content hash {actual[:19]}… does not match "
                f"{spec.content_hash[:19]}…)",
                hint="re-create it with `geode crystallize`, or edit the generated Python module instead",
            )
        checker = trust if trust is not None else current_spec_trust()
        spec._unvouched = not spec.signed_by(checker)
        if spec._unvouched and not checker.allow_unsigned:
            state = "is not signed" if not spec.hmac else "has a signature this machine's key does not verify"
            raise WorkflowSpecError(
                f"{where} {state}: a spec names code to import and run, so only specs signed with "
                "the operator's key load",
                hint="re-create it here with `geode crystallize`, set GEODE_WORKFLOWS_SIGNING_KEY to the "
                "key it was signed with, or (trusting its author) set GEODE_WORKFLOWS_ALLOW_UNSIGNED=true",
            )
        return spec

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, trust: SpecTrust | None = None) -> WorkflowSpec:
        """Read and check a spec file (see :meth:`from_json`)."""
        source = Path(path)
        try:
            text = source.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise WorkflowSpecError(f"workflow spec {str(source)!r} does not exist") from None
        except (OSError, UnicodeDecodeError) as err:
            raise WorkflowSpecError(f"cannot read workflow spec {str(source)!r}: {err}") from None
        return cls.from_json(text, where=f"workflow spec {str(source)!r}", trust=trust)

    # -- queries -----------------------------------------------------------------------------------

    def route(self, label: str) -> RouteSpec:
        """The route with this label."""
        for route in self.routes:
            if route.label == label:
                return route
        raise KeyError(label)

    def predict_steps(self) -> Iterator[PredictStep]:
        """Every LM step: the router first, then each route's in order."""
        if self.router is not None:
            yield self.router
        for route in self.routes:
            yield from (s for s in route.steps if isinstance(s, PredictStep))


def _problems(err: pydantic.ValidationError) -> str:
    found = []
    for e in err.errors()[:8]:
        where = ".".join(str(p) for p in e["loc"]) or "spec"
        message = "unknown field" if e["type"] == "extra_forbidden" else e["msg"]
        found.append(f"{where}: {message}")
    more = len(err.errors()) - len(found)
    return "; ".join(found) + (f" (and {more} more)" if more > 0 else "")


def _fields_of(step: PredictStep | ToolStep | OutputStep) -> set[str]:
    if isinstance(step, PredictStep):
        return {f.name for f in step.outputs}
    if isinstance(step, ToolStep):
        return {"observation", "observations"}
    return set(step.outputs)


def _binding_problems(
    binding: Binding, where: str, inputs: set[str], earlier: dict[str, set[str]]
) -> Iterator[str]:
    if binding.source == "input" and binding.field not in inputs:
        yield f"{where} reads unknown input {binding.field!r}"
    if binding.source == "step":
        fields = earlier.get(binding.step or "")
        if fields is None:
            yield f"{where} reads step {binding.step!r}, which does not come before it"
        elif binding.field not in fields:
            yield f"{where} reads {binding.step}.{binding.field}, which that step does not produce"


def _reference_problems(spec: WorkflowSpec) -> Iterator[str]:
    inputs = {f.name for f in spec.signature.inputs}
    outputs = {f.name for f in spec.signature.outputs}
    tools = {t.name for t in spec.tools}
    if len(tools) != len(spec.tools):
        yield "two tools share a name"
    labels = [r.label for r in spec.routes]
    if len(set(labels)) != len(labels):
        yield "two routes share a label"
    if OTHER_ROUTE in labels:
        yield f"a route may not be labelled {OTHER_ROUTE!r}"
    start: dict[str, set[str]] = {}
    if spec.router is None:
        if len(spec.routes) != 1:
            yield "several routes need a router"
    else:
        router = spec.router
        route_field = next((f for f in router.outputs if f.name == "route"), None)
        if route_field is None or set(route_field.choices or ()) != {*labels, OTHER_ROUTE}:
            yield f"the router needs a 'route' output whose choices are the route labels and {OTHER_ROUTE!r}"
        yield from _step_problems(router, "router", inputs, {})
        start[router.id] = _fields_of(router)
    for route in spec.routes:
        earlier = dict(start)
        steps = route.steps
        for index, step in enumerate(steps):
            where = f"route {route.label!r} step {step.id!r}"
            if step.id in earlier:
                yield f"{where}: the id is used twice"
            yield from _step_problems(step, where, inputs, earlier)
            if isinstance(step, ToolStep) and step.tool not in tools:
                yield f"{where} calls tool {step.tool!r}, which the spec does not list"
            if isinstance(step, OutputStep):
                if index != len(steps) - 1:
                    yield f"{where}: the output step must be last"
                if set(step.outputs) != outputs:
                    yield f"{where} must bind exactly the outputs {sorted(outputs)}"
            earlier[step.id] = _fields_of(step)
        if not isinstance(steps[-1], OutputStep):
            yield f"route {route.label!r} does not end with an output step"


def _step_problems(
    step: PredictStep | ToolStep | OutputStep, where: str, inputs: set[str], earlier: dict[str, set[str]]
) -> Iterator[str]:
    if isinstance(step, PredictStep):
        names = [f.name for f in step.inputs]
        if set(step.bindings) != set(names):
            yield f"{where} must bind exactly its input fields {names}"
        bindings = step.bindings.items()
    elif isinstance(step, ToolStep):
        bindings = step.args.items()
    else:
        bindings = step.outputs.items()
    for name, binding in bindings:
        yield from _binding_problems(binding, f"{where} {name!r}", inputs, earlier)
