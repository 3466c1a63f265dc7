"""Request and response models generated from a program's DSPy signature.

A program's interface is found in this order: a ``geode_signature`` attribute, a ``signature``
attribute (``dspy.Predict``, ``dspy.ChainOfThought``, :class:`geode.Agent`...), else the parameters of
``forward`` for the inputs and the output fields of the last predictor for the outputs. Text fields are
capped at ``max_field_chars`` and lists at ``max_items``, so oversized input is refused with 422 before
any LM call. A ``dspy.History`` input is not part of the request: the server fills it from the session.
"""

from __future__ import annotations

import inspect
import re
import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import dspy
import pydantic
from dspy.signatures.signature import ensure_signature
from pydantic import BaseModel, ConfigDict, Field, create_model

from geode.errors import ConfigError

__all__ = [
    "RESERVED_FIELDS",
    "FieldSpec",
    "ProgramInterface",
    "interface_of",
    "request_model",
    "response_model",
    "route_name",
]

RESERVED_FIELDS = frozenset({"session_id", "user_id", "version", "options"})
"""Request keys the server uses itself; a program input with one of these names cannot be served."""

_SIMPLE = (str, int, float, bool)


@dataclass(frozen=True)
class FieldSpec:
    """One input or output field of a served program."""

    name: str
    annotation: Any
    description: str | None = None
    required: bool = True
    default: Any = None


@dataclass(frozen=True)
class ProgramInterface:
    """What a program takes and returns, as the server exposes it."""

    inputs: tuple[FieldSpec, ...]
    outputs: tuple[FieldSpec, ...]
    history_field: str | None = None
    """The ``dspy.History`` input the server fills from the session, if any."""
    instructions: str | None = None

    @property
    def input_names(self) -> tuple[str, ...]:
        """Names of the request's input fields."""
        return tuple(f.name for f in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        """Names of the response's output fields."""
        return tuple(f.name for f in self.outputs)


def route_name(name: str) -> str:
    """A URL path segment for a program name (``pkg.mod:program`` → ``pkg.mod.program``).

    Example:
        >>> route_name("geode.examples.qa:program")
        'geode.examples.qa.program'
    """
    slug = re.sub(r"[^A-Za-z0-9_.-]+", ".", name).strip(".")
    if not slug:
        raise ConfigError(f"program name {name!r} gives an empty URL path", hint="serve it as NAME=REF")
    return slug


def _is_history(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, dspy.History)


def _field_desc(info: Any) -> str | None:
    extra = getattr(info, "json_schema_extra", None) or {}
    desc = extra.get("desc") if isinstance(extra, dict) else None
    if isinstance(desc, str) and desc and not desc.startswith("${"):
        return desc
    return getattr(info, "description", None)


def _signature_fields(signature: type[dspy.Signature], kind: str) -> list[FieldSpec]:
    fields = signature.input_fields if kind == "input" else signature.output_fields
    return [FieldSpec(name, info.annotation, _field_desc(info)) for name, info in fields.items()]


def _forward_inputs(module: dspy.Module) -> list[FieldSpec] | None:
    try:
        # The class's function, not `module.forward`: DSPy warns on reading `forward` off an instance.
        cls: Any = type(module)
        forward = cls.forward
        params = dict(list(inspect.signature(forward).parameters.items())[1:])
        hints = typing.get_type_hints(forward)
    except (TypeError, ValueError, NameError):
        return None
    specs: list[FieldSpec] = []
    for name, param in params.items():
        if param.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            return None if not specs else specs
        annotation = hints.get(name, Any)
        required = param.default is inspect.Parameter.empty
        specs.append(FieldSpec(name, annotation, None, required, None if required else param.default))
    return specs


# Attributes of wrapper modules whose ``forward(**kwargs)`` passes everything to one inner module:
# geode.Fallback's ``primary``, dspy.BestOfN's and dspy.Refine's ``module``, ChainOfThought's ``predict``.
_DELEGATES = ("primary", "module", "predict")


def _delegate(module: dspy.Module) -> dspy.Module | None:
    for attr in _DELEGATES:
        inner = getattr(module, attr, None)
        if isinstance(inner, dspy.Module) and inner is not module:
            return inner
    return None


def interface_of(module: dspy.Module) -> ProgramInterface:
    """Find a program's inputs and outputs.

    In order: a ``geode_signature`` attribute, a ``signature`` attribute (``Predict``, ``ReAct``,
    ``geode.Agent``), the typed parameters of ``forward`` (custom modules; outputs from the last
    predictor), else the module it wraps (``ChainOfThought``'s predictor, with ``reasoning`` among the
    outputs; ``geode.Fallback``'s primary; ``dspy.BestOfN``'s and ``dspy.Refine``'s module).

    Raises:
        ConfigError: The interface cannot be found, or an input uses a reserved name.
    """
    signature: Any = getattr(module, "geode_signature", None) or getattr(module, "signature", None)
    if isinstance(signature, str):
        signature = ensure_signature(signature)
    if isinstance(signature, type) and issubclass(signature, dspy.Signature):
        resolved: type[dspy.Signature] = signature
        inputs = _signature_fields(resolved, "input")
        outputs = _signature_fields(resolved, "output")
        instructions = resolved.instructions
    else:
        predictors = module.predictors()
        found = _forward_inputs(module)
        inner = _delegate(module) if found is None else None
        if inner is not None:
            return interface_of(inner)
        if found is None or not predictors:
            raise ConfigError(
                f"cannot tell the inputs and outputs of {type(module).__name__}",
                hint="give it a `geode_signature` attribute (a dspy.Signature or 'a, b -> c') or typed "
                "forward() parameters",
            )
        inputs = found
        last: Any = predictors[-1].signature
        outputs = _signature_fields(last, "output")
        instructions = (inspect.getdoc(type(module)) or "").split("\n\n")[0] or None
    history = [f.name for f in inputs if _is_history(f.annotation)]
    if len(history) > 1:
        raise ConfigError(f"{type(module).__name__} has more than one dspy.History input: {history}")
    clash = sorted(RESERVED_FIELDS & {f.name for f in inputs})
    if clash:
        raise ConfigError(
            f"{type(module).__name__} has inputs named {clash}, which the server reserves",
            hint=f"rename them; reserved request keys: {sorted(RESERVED_FIELDS)}",
        )
    return ProgramInterface(
        inputs=tuple(f for f in inputs if not _is_history(f.annotation)),
        outputs=tuple(outputs),
        history_field=history[0] if history else None,
        instructions=instructions,
    )


def _is_serializable(annotation: Any) -> bool:
    try:
        pydantic.TypeAdapter(annotation).json_schema()
    except Exception:
        return False
    return True


def _bounded(annotation: Any, max_chars: int, max_items: int) -> Any:
    """The annotation with length limits on strings and lists (recursively, for common shapes)."""
    if annotation is str:
        return Annotated[str, Field(max_length=max_chars)]
    origin = get_origin(annotation)
    args = get_args(annotation)
    if origin in (list, tuple, set, frozenset) and args:
        inner = _bounded(args[0], max_chars, max_items)
        container = list if origin is list else origin
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            return annotation
        return Annotated[container[inner], Field(max_length=max_items)]  # type: ignore[index]
    if origin is dict and len(args) == 2:
        value = _bounded(args[1], max_chars, max_items)
        return Annotated[dict[args[0], value], Field(max_length=max_items)]
    if origin in (Union, types.UnionType) and args:
        return Union[tuple(_bounded(a, max_chars, max_items) for a in args)]  # noqa: UP007
    if origin is Literal or annotation in _SIMPLE or annotation is type(None):
        return annotation
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return annotation if _is_serializable(annotation) else Any


class _Options(BaseModel):
    """Per-request LM settings (applied to this request only, through ``dspy.context``)."""

    model_config = ConfigDict(extra="forbid")

    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    max_tokens: int | None = Field(default=None, ge=1, le=32_768)


def request_model(
    model_name: str, interface: ProgramInterface, *, max_chars: int, max_items: int = 1000
) -> type[BaseModel]:
    """The pydantic model of a program's request body: its inputs plus ``session_id`` and friends."""
    fields: dict[str, Any] = {}
    for spec in interface.inputs:
        annotation = _bounded(spec.annotation, max_chars, max_items)
        default = ... if spec.required else spec.default
        fields[spec.name] = (annotation, Field(default=default, description=spec.description))
    session: Any = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:@-]+$")]
    short: Any = Annotated[str, Field(max_length=128)]
    fields["session_id"] = (
        session | None,
        Field(default=None, description="Continue a conversation: earlier turns are the history."),
    )
    fields["user_id"] = (
        short | None,
        Field(default=None, description="The end user, recorded as user.id on the trace."),
    )
    fields["version"] = (
        short | None,
        Field(default=None, description="Ask for a specific served version (primary or candidate)."),
    )
    fields["options"] = (_Options | None, Field(default=None))
    return create_model(
        model_name,
        __config__=ConfigDict(extra="forbid", title=model_name),
        __doc__=interface.instructions or None,
        **fields,
    )


class Usage(BaseModel):
    """Tokens and cost the request used (as the LM reported them)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cost_usd: float | None = None


def response_model(model_name: str, interface: ProgramInterface) -> type[BaseModel]:
    """The pydantic model of a program's response: its outputs plus the trace id and version."""
    output_fields: dict[str, Any] = {}
    for spec in interface.outputs:
        annotation = spec.annotation if _is_serializable(spec.annotation) else Any
        output_fields[spec.name] = (annotation | None, Field(default=None, description=spec.description))
    outputs = create_model(f"{model_name}Outputs", **output_fields)
    return create_model(
        model_name,
        program=(str, ...),
        version=(str | None, Field(default=None, description="The program version that answered.")),
        outputs=(outputs, ...),
        trace_id=(str | None, Field(default=None, description="Send it back to POST /feedback.")),
        session_id=(str | None, None),
        usage=(Usage, Field(default_factory=Usage)),
    )
