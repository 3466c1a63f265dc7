"""``geode run``: run a program once and print its prediction."""

from __future__ import annotations

import json
from typing import Any

import dspy
import typer

from geode.cli._common import LM_OPTION, make_runtime, parse_inputs
from geode.errors import InputError
from geode.runtime.runtime import trace_id_of

__all__ = ["register"]


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except TypeError:
        if hasattr(value, "model_dump"):
            return value.model_dump()
        return str(value)


def _outputs(prediction: dspy.Prediction) -> dict[str, Any]:
    return {key: _jsonable(value) for key, value in prediction.items()}


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
        destination = None
        if pipeline is not None:
            destination = _phoenix_ui(pipeline.endpoint) or (
                str(pipeline.otlp_file) if pipeline.otlp_file else None
            )
    if as_json:
        document = {"program": program, "outputs": outputs, "trace_id": trace_id}
        typer.echo(json.dumps(document, ensure_ascii=False, indent=2))
        return
    # rich loads here, after the answer: at the top it would delay the model load of every run.
    from rich.console import Console
    from rich.table import Table

    table = Table(show_header=False, box=None, pad_edge=False)
    for key, value in outputs.items():
        table.add_row(f"[bold]{key}[/bold]", value if isinstance(value, str) else json.dumps(value))
    console = Console()
    console.print(table)
    if trace_id is not None:
        where = f" → {destination}" if destination else ""
        console.print(f"[dim]trace {trace_id}{where}  (geode trace show {trace_id})[/dim]")


def _phoenix_ui(endpoint: str | None) -> str | None:
    """The collector's base URL (Phoenix's UI) from its OTLP traces URL."""
    if not endpoint:
        return None
    return endpoint.removesuffix("/v1/traces")


def register(app: typer.Typer) -> None:
    """Add ``geode run`` to the CLI."""
    app.command("run")(run)
