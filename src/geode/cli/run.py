"""``geode run``: run a program once and print its prediction."""

from __future__ import annotations

import dataclasses
import json
import shlex
from collections.abc import Mapping
from enum import Enum
from pathlib import Path
from typing import Any

import dspy
import typer

from geode.cli._common import LM_OPTION, make_runtime, parse_inputs
from geode.errors import InputError
from geode.runtime.runtime import trace_id_of

__all__ = ["register", "trace_link"]


def _jsonable(value: Any) -> Any:
    """Plain JSON data, never a repr.

    Records go by their ``to_dict``, dataclasses and pydantic models by field, enums by value,
    containers element by element; only what has no structure becomes its text.
    """
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Enum):
        return _jsonable(value.value)
    to_dict = getattr(value, "to_dict", None)
    if callable(to_dict) and not isinstance(value, type):
        return _jsonable(to_dict())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    dump = getattr(value, "model_dump", None)
    if callable(dump) and not isinstance(value, type):
        return _jsonable(dump(mode="json"))
    if isinstance(value, dspy.Prediction):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    return str(value)


def _outputs(prediction: dspy.Prediction) -> dict[str, Any]:
    return {key: _jsonable(value) for key, value in prediction.items()}


def _step_line(step: Mapping[str, Any]) -> str:
    tool = step.get("tool") or "(unparsed)"
    args = ", ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in (step.get("args") or {}).items())
    line = (
        f"{step.get('index', 0) + 1}. {tool}({args})"
        if tool != "finish"
        else f"{step.get('index', 0) + 1}. finish"
    )
    seen = step.get("error") or step.get("observation")
    if seen and tool != "finish":
        text = " ".join(str(seen).split())
        line += f" → {text[:77] + '…' if len(text) > 78 else text}"
    return line


def _text_view(key: str, value: Any) -> str:
    """How the text view shows one output: agent steps and termination summarised in a few lines."""
    if key == "steps" and isinstance(value, list) and all(isinstance(v, dict) and "tool" in v for v in value):
        return "\n".join(_step_line(step) for step in value) or "(no steps)"
    if key == "termination" and isinstance(value, dict) and "reason" in value:
        return (
            f"{value['reason']}: {value.get('detail', '')} ({value.get('iterations', 0)} iterations, "
            f"{value.get('lm_calls', 0)} LM calls, {value.get('seconds', 0.0):.1f} s)"
        )
    if key == "trajectory" and isinstance(value, dict):
        return f"({len(value)} entries; --json shows them)"
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def run(
    program: str = typer.Argument(
        ..., help="'package.module:attribute', 'file.py:attribute' or a registered name."
    ),
    inputs: list[str] = typer.Option(  # noqa: B008  (typer's declaration style)
        [], "--input", "-i", help="An input field: key=value (text) or key:=<json>. Repeat for each field."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the prediction as JSON."),
    lm: str | None = LM_OPTION,
    session_id: str | None = typer.Option(None, "--session", help="Session id recorded on the trace."),
) -> None:
    """Run a program on the configured LM and print its prediction.

    Example: geode run geode.examples.qa:program --input question="What is the capital of France?"
    """
    parsed = parse_inputs(inputs)
    if not parsed:
        raise InputError("no inputs given", hint="pass each input field as --input key=value")
    with make_runtime(lm=lm) as rt:
        prediction = rt.run(program, session_id=session_id, **parsed)
        outputs = _outputs(prediction)
        trace_id = trace_id_of(prediction)
        pipeline = rt.export_pipeline
        hint = _trace_hint(
            trace_id, pipeline.endpoint if pipeline else None, pipeline.otlp_file if pipeline else None
        )
    if as_json:
        document = {"program": program, "outputs": outputs, "trace_id": trace_id}
        from geode.cli._text import terminal_json

        typer.echo(terminal_json(document, indent=2))
        return
    # rich loads here, after the answer: at the top it would delay the model load of every run.
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text

    from geode.cli._console import make_console
    from geode.cli._tables import print_table

    table = Table(show_header=False, box=None, pad_edge=False)
    for key, value in outputs.items():
        table.add_row(f"[bold]{key}[/bold]", Text(_text_view(key, value)))
    console = make_console()
    print_table(console, table)
    if hint is not None:
        console.print(f"[dim]{escape(hint)}[/dim]")


def _trace_hint(trace_id: str | None, endpoint: str | None, otlp_file: Path | None) -> str | None:
    """Where the run's trace went and the command that shows it, or that it went nowhere.

    The command must work as printed: ``geode trace show`` reads Phoenix unless given ``--source``, so a
    trace kept only in the span file is shown from the file.
    """
    if trace_id is None:
        return None
    if endpoint:
        return f"trace {trace_id} → {trace_link(endpoint, trace_id)}  (geode trace show {trace_id})"
    if otlp_file is not None:
        show = f"geode trace show {trace_id} --source {shlex.quote(str(otlp_file))}"
        return f"trace {trace_id} → {otlp_file}  ({show})"
    return (
        f"trace {trace_id} was not recorded: no Phoenix is running and no span file is set "
        "(start one with `geode phoenix`, or set GEODE_TRACING_OTLP_FILE)"
    )


def trace_link(endpoint: str | None, trace_id: str | None) -> str | None:
    """The page of this trace in Phoenix's UI, from the collector's OTLP traces URL.

    Phoenix's ``/redirects/traces/<trace id>`` finds the trace's project and opens the trace there.
    """
    if not endpoint:
        return None
    base = endpoint.removesuffix("/v1/traces").rstrip("/")
    return f"{base}/redirects/traces/{trace_id}" if trace_id else base


def register(app: typer.Typer) -> None:
    """Add ``geode run`` to the CLI."""
    app.command("run")(run)
