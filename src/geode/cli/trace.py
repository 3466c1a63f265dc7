"""``geode trace show``: a trace's span tree in the terminal, for people who do not want a browser."""

from __future__ import annotations

import json
from typing import Any

import typer
from rich.text import Text
from rich.tree import Tree

from geode.cli._common import PROJECT_OPTION, SOURCE_OPTION, make_settings, open_source
from geode.cli._console import make_console
from geode.cli._names import no_runs_hint, program_name, require_one_program
from geode.cli._tables import print_table
from geode.cli._text import terminal_json
from geode.errors import InputError, TraceSourceError
from geode.traces.records import AttributeValue, SpanRecord, TraceRecord
from geode.traces.sources import (
    PhoenixTraceSource,
    TraceFilter,
    latest_trace,
    normalize_trace_id,
)
from geode.traces.vocab import DocumentAttributes, GeodeAttributes, SpanAttributes

__all__ = ["PROJECT_OPTION", "SOURCE_OPTION", "open_source", "register", "render_trace", "trace_app"]

trace_app = typer.Typer(help="Inspect traces: span trees in the terminal.", no_args_is_help=True)

_KIND_STYLE = {
    "AGENT": "bold magenta",
    "CHAIN": "cyan",
    "LLM": "bold blue",
    "TOOL": "bold yellow",
    "RETRIEVER": "bold green",
    "EMBEDDING": "green",
    "RERANKER": "green",
    "GUARDRAIL": "red",
    "EVALUATOR": "bright_magenta",
}
_STATUS_MARK = {"OK": ("✓", "green"), "ERROR": ("✗", "bold red"), "UNSET": ("·", "dim")}

# Attributes worth a glance on each kind of span, shown after the name as key=value.
_KEY_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "AGENT": (
        GeodeAttributes.PROGRAM_NAME,
        GeodeAttributes.AGENT_ITERATIONS,
        GeodeAttributes.AGENT_TERMINATION,
        GeodeAttributes.AGENT_TERMINATION_DETAIL,
    ),
    "LLM": (SpanAttributes.LLM_MODEL_NAME, GeodeAttributes.PREDICTOR_NAME, GeodeAttributes.LLM_CACHE_HIT),
    "TOOL": (GeodeAttributes.TOOL_ERROR, GeodeAttributes.TOOL_TIMEOUT),
    "CHAIN": (GeodeAttributes.PREDICTOR_NAME, GeodeAttributes.WORKFLOW_STEP, GeodeAttributes.FALLBACK_CHOICE),
    "RETRIEVER": (),
}
_SHORT_NAMES = {
    GeodeAttributes.PROGRAM_NAME: "program",
    GeodeAttributes.AGENT_ITERATIONS: "iterations",
    GeodeAttributes.AGENT_TERMINATION: "ended",
    GeodeAttributes.AGENT_TERMINATION_DETAIL: "why",
    SpanAttributes.LLM_MODEL_NAME: "model",
    GeodeAttributes.PREDICTOR_NAME: "predictor",
    GeodeAttributes.LLM_CACHE_HIT: "cache_hit",
    GeodeAttributes.TOOL_ERROR: "error",
    GeodeAttributes.TOOL_TIMEOUT: "timed_out",
    GeodeAttributes.WORKFLOW_STEP: "step",
    GeodeAttributes.FALLBACK_CHOICE: "fallback",
}


_NAME_WIDTH = 200
"""Longest key attribute shown inline; only values (arguments, outputs, messages) are cut shorter."""


def _short(value: AttributeValue | None, width: int) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _duration(ms: float | None) -> str:
    if ms is None:
        return "unfinished"
    if ms < 1:
        return f"{ms * 1000:.0f} µs"
    if ms < 1000:
        return f"{ms:.1f} ms"
    return f"{ms / 1000:.2f} s"


def _tokens(span: SpanRecord) -> str | None:
    prompt, completion, total = span.prompt_tokens, span.completion_tokens, span.total_tokens
    if total is None:
        return None
    if prompt is not None or completion is not None:
        return f"{prompt or 0}→{completion or 0} tok"
    return f"{total} tok"


def _label(span: SpanRecord, *, width: int) -> Text:
    style = _KIND_STYLE.get(span.kind, "white")
    mark, mark_style = _STATUS_MARK.get(span.status, ("?", "dim"))
    label = Text()
    label.append(f"{mark} ", style=mark_style)
    label.append(f"{span.kind:<9}", style=style)
    label.append(" ")
    label.append(span.tool_name or span.name, style="bold")
    if span.tool_name and span.tool_name != span.name:
        label.append(f" ({span.name})", style="dim")
    label.append(f"  {_duration(span.duration_ms)}", style="dim")
    tokens = _tokens(span)
    if tokens:
        label.append(f"  {tokens}", style="blue")
    details: list[str] = []
    for key in _KEY_ATTRIBUTES.get(span.kind, ()):
        value = span.get(key)
        if value is not None and value != "" and value is not False:
            # Key attributes are names (program, model, predictor) a user looks up or copies: whole.
            details.append(f"{_SHORT_NAMES.get(key, key)}={_short(value, _NAME_WIDTH)}")
    if span.kind == "TOOL" and span.input_value:
        details.append(f"args={_short(span.input_value, width)}")
    if span.kind == "TOOL" and span.output_value and span.status != "ERROR":
        details.append(f"→ {_short(span.output_value, width)}")
    if span.kind == "RETRIEVER":
        documents = span.indexed(SpanAttributes.RETRIEVAL_DOCUMENTS)
        details.append(f"documents={len(documents)}")
        ids = [
            str(d.get(DocumentAttributes.DOCUMENT_ID))
            for d in documents[:3]
            if DocumentAttributes.DOCUMENT_ID in d
        ]
        if ids:
            details.append("ids=" + ",".join(ids))
    if details:
        label.append("  " + "  ".join(details))
    problem = span.exception
    if problem is not None:
        label.append(f"  {problem.type}: {_short(problem.message, width)}", style="red")
    elif span.status == "ERROR" and span.status_message:
        label.append(f"  {_short(span.status_message, width)}", style="red")
    return label


def _header(trace: TraceRecord) -> Text:
    header = Text()
    header.append("trace ", style="dim")
    header.append(trace.trace_id, style="bold")
    parts: list[str] = []
    program = trace.attribute(GeodeAttributes.PROGRAM_NAME)
    if program is not None:
        parts.append(f"program {program}")
    version = trace.attribute(GeodeAttributes.PROGRAM_VERSION)
    if version is not None:
        parts.append(f"version {_short(version, 12)}")
    session = trace.attribute(SpanAttributes.SESSION_ID)
    if session is not None:
        parts.append(f"session {session}")
    parts.append(trace.start_time.strftime("%Y-%m-%d %H:%M:%S UTC"))
    parts.append(_duration(trace.duration_ms))
    parts.append(f"{len(trace.spans)} spans")
    if trace.total_tokens:
        parts.append(f"{trace.total_tokens} tokens")
    header.append("  " + " · ".join(parts), style="dim")
    if not trace.complete:
        header.append("  (incomplete: some spans have not arrived)", style="yellow")
    return header


def render_trace(trace: TraceRecord, *, attributes: bool = False, width: int = 60) -> Tree:
    """A rich Tree of a trace: kind, name, duration, status, tokens and key attributes per span.

    Args:
        trace: The trace to draw.
        attributes: Also list every attribute of every span under it.
        width: Longest value shown inline before it is cut with ``…``.
    """
    tree = Tree(_header(trace), guide_style="dim")
    nodes: dict[str, Tree] = {}
    for span, _depth in trace.walk():
        parent = nodes.get(span.parent_id or "") if span.parent_id else None
        node = (parent or tree).add(_label(span, width=width))
        nodes[span.span_id] = node
        if attributes:
            for key in sorted(span.attributes):
                if key == SpanAttributes.OPENINFERENCE_SPAN_KIND:
                    continue
                node.add(Text(f"{key} = {_short(span.attributes[key], width * 2)}", style="dim"))
    return tree


def _span_json(span: SpanRecord) -> dict[str, Any]:
    return {
        "trace_id": span.trace_id,
        "span_id": span.span_id,
        "parent_id": span.parent_id,
        "name": span.name,
        "kind": span.kind,
        "start_time": span.start_time.isoformat(),
        "end_time": span.end_time.isoformat() if span.end_time else None,
        "duration_ms": span.duration_ms,
        "status": span.status,
        "status_message": span.status_message,
        "attributes": dict(span.attributes),
        "events": [
            {"name": e.name, "time": e.time.isoformat(), "attributes": dict(e.attributes)}
            for e in span.events
        ],
    }


@trace_app.command("show")
def show(
    trace_id: str | None = typer.Argument(None, help="The trace to show (32 hex digits)."),
    last: bool = typer.Option(False, "--last", help="Show the newest trace instead."),
    source: str = SOURCE_OPTION,
    project: str | None = PROJECT_OPTION,
    program: str | None = typer.Option(
        None, "--program", help="With --last: the newest run of this program."
    ),
    wait: float | None = typer.Option(
        None,
        "--wait",
        min=0.0,
        help="Seconds to wait for a trace that has not fully arrived. Default: 10 for Phoenix "
        "(it ingests asynchronously), 0 for files.",
    ),
    attributes: bool = typer.Option(False, "--attributes", "-a", help="List every attribute of every span."),
    as_json: bool = typer.Option(False, "--json", help="Print the spans as JSON instead of a tree."),
) -> None:
    """Print a trace's span tree: kind, name, duration, status, tokens and key attributes.

    Example: geode trace show --last
    """
    if (trace_id is None) == (not last):
        raise InputError("give a TRACE_ID or --last (not both)", hint="e.g. geode trace show --last")
    if program is not None and not last:
        raise InputError("--program only narrows --last", hint="drop --program, or use --last")
    settings = make_settings()
    with open_source(settings, source, project) as reader:
        if last:
            wanted = program_name(program) if program else None
            if wanted is not None:
                require_one_program(reader, wanted)
            trace = latest_trace(reader, TraceFilter(program=wanted))
            if trace is None:
                scope = f" of program {wanted!r}" if wanted else ""
                raise TraceSourceError(
                    f"no trace{scope} in {reader.description}", hint=no_runs_hint(reader) if wanted else None
                )
        else:
            normalized = normalize_trace_id(trace_id or "")
            patience = wait if wait is not None else (10.0 if isinstance(reader, PhoenixTraceSource) else 0.0)
            found = reader.wait_for([normalized], timeout_s=patience) if patience > 0 else None
            # A trace still arriving (or never complete) is still worth showing as far as it got.
            trace = found.traces[0] if found is not None and found.traces else reader.trace(normalized)
    if as_json:
        typer.echo(terminal_json([_span_json(s) for s, _ in trace.walk()], indent=2))
        return
    console = make_console()
    print_table(console, render_trace(trace, attributes=attributes))
    console.print(Text(f"from {reader.description}", style="dim"))


def register(app: typer.Typer) -> None:
    """Add ``geode trace`` to the CLI."""
    app.add_typer(trace_app, name="trace")
