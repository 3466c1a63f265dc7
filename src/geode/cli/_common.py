"""Helpers shared by the CLI command modules, so that no command module imports another.

Building a Runtime; parsing ``key=value`` inputs and ``--since`` durations; the ``--source`` and
``--project`` options and the trace reader they open; the feedback on a set of runs. Every command
imports this module, ``geode run`` too: trace sources, Phoenix and the feedback log are imported inside
the functions that use them, so a command pays only for what it calls.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from geode.errors import InputError, TraceSourceError
from geode.runtime.runtime import Runtime
from geode.runtime.settings import LMSettings, Settings

if TYPE_CHECKING:
    from geode.runtime.serving.feedback import FeedbackRecord
    from geode.traces.records import TraceRecord
    from geode.traces.sources import PhoenixTraceSource, TraceSource

__all__ = [
    "ALLOW_CACHE_OPTION",
    "LM_OPTION",
    "PROJECT_OPTION",
    "SOURCE_OPTION",
    "make_runtime",
    "make_settings",
    "open_source",
    "parse_inputs",
    "parse_pairs",
    "parse_since",
    "run_feedback",
]

LM_OPTION = typer.Option(
    None,
    "--lm",
    help="LM to use: 'local' (embedded llama.cpp model) or a litellm model string such as "
    "'openai/gpt-4o-mini'. Default: GEODE_LM_MODEL, else 'local'.",
)

ALLOW_CACHE_OPTION = typer.Option(
    False,
    "--allow-cache",
    help="Let DSPy's response cache answer repeated LM calls (faster re-runs). Off by default here: a "
    "cached answer costs no tokens and no time, so it is not a measured call. Cache hits are counted "
    "and shown apart from LM calls.",
)

SOURCE_OPTION = typer.Option(
    "phoenix", "--source", "-s", help="'phoenix' (configured or local) or an OTLP-JSON file or folder."
)
PROJECT_OPTION = typer.Option(
    None, "--project", help="Phoenix project. Default: GEODE_TRACING_PROJECT, else 'geode'."
)


def make_settings(*, lm: str | None = None, measure: bool = False, allow_cache: bool = False) -> Settings:
    """Settings from env and defaults, with the CLI's overrides applied.

    Args:
        lm: ``--lm``: the model to use instead of ``GEODE_LM_MODEL``.
        measure: The command measures calls (tokens, latency, LM calls): DSPy's response cache is
            bypassed, unless ``allow_cache``.
        allow_cache: ``--allow-cache``: keep the cache setting from the environment.
    """
    settings = Settings()
    if lm:
        settings = settings.model_copy(update={"lm": LMSettings(model=lm)})
    if measure and not allow_cache and settings.lm.cache:
        settings = settings.model_copy(update={"lm": settings.lm.model_copy(update={"cache": False})})
    return settings


def make_runtime(*, lm: str | None = None, measure: bool = False, allow_cache: bool = False) -> Runtime:
    """A Runtime built from settings, with the CLI's overrides applied (see :func:`make_settings`)."""
    return Runtime(make_settings(lm=lm, measure=measure, allow_cache=allow_cache))


def parse_inputs(pairs: Sequence[str]) -> dict[str, Any]:
    """Parse ``key=value`` (a string) and ``key:=json`` (a JSON value) pairs.

    Raises:
        InputError: A pair has no ``=``, an empty key, a repeated key, or invalid JSON after ``:=``.
    """
    inputs: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise InputError(
                f"bad --input {pair!r}",
                hint="use --input key=value (text) or --input key:=<json> (JSON value)",
            )
        is_json = key.endswith(":")
        key = key.removesuffix(":").strip()
        if not key:
            raise InputError(f"bad --input {pair!r}: the key is empty", hint="use --input key=value")
        if key in inputs:
            raise InputError(f"--input {key!r} given twice")
        if is_json:
            try:
                inputs[key] = json.loads(value)
            except json.JSONDecodeError as err:
                raise InputError(
                    f"--input {key}:= is not valid JSON: {err.msg} at column {err.colno}"
                ) from err
        else:
            inputs[key] = value
    return inputs


def parse_pairs(pairs: Sequence[str], option: str) -> dict[str, Any]:
    """Parse ``key=value`` (text) and ``key:=json`` (a JSON scalar) pairs; a repeated key collects a list.

    Raises:
        InputError: A pair has no ``=``, an empty key, or a value that is not a JSON scalar after ``:=``.
    """
    parsed: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep:
            raise InputError(
                f"bad {option} {pair!r}", hint=f"use {option} key=value (or key:=<json> for a number)"
            )
        is_json = key.endswith(":")
        key = key.removesuffix(":").strip()
        if not key:
            raise InputError(f"bad {option} {pair!r}: the key is empty")
        value: Any = raw
        if is_json:
            try:
                value = json.loads(raw)
            except json.JSONDecodeError as err:
                raise InputError(f"{option} {key}:= is not valid JSON: {err.msg}") from err
            if not isinstance(value, str | int | float | bool):
                raise InputError(f"{option} {key}:= must be a string, number or boolean, not {raw!r}")
        if key in parsed:
            previous = parsed[key]
            parsed[key] = [*previous, value] if isinstance(previous, list) else [previous, value]
        else:
            parsed[key] = value
    return parsed


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str) -> timedelta:
    """``30m``, ``1h``, ``7d`` → a timedelta.

    Example:
        >>> parse_since("90m")
        datetime.timedelta(seconds=5400)
    """
    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd])\s*", text)
    if not found:
        raise InputError(f"bad --since {text!r}", hint="use a number and a unit: 30m, 1h, 7d")
    return timedelta(seconds=float(found.group(1)) * _UNITS[found.group(2)])


def _source(settings: Settings, source: str, project: str | None) -> TraceSource:
    from geode.runtime.phoenix import local_phoenix_url
    from geode.traces.sources import OtlpFileTraceSource, PhoenixTraceSource, phoenix_base_url

    if source != "phoenix":
        path = Path(source)
        if not path.exists():
            raise InputError(
                f"--source {source!r} is neither 'phoenix' nor an existing OTLP-JSON file or folder",
                hint=f"the runtime writes one when tracing.otlp_file is set; its default folder is {settings.traces_dir}",
            )
        return OtlpFileTraceSource(path, project=project)
    endpoint = settings.tracing.endpoint
    url = phoenix_base_url(endpoint) if endpoint else local_phoenix_url(settings)
    if url is None:
        raise TraceSourceError(
            "no Phoenix is running and no collector endpoint is configured",
            hint="start one with `geode phoenix`, set PHOENIX_COLLECTOR_ENDPOINT, or read a file with --source PATH",
        )
    key = settings.phoenix.api_key
    return PhoenixTraceSource(
        url, project or settings.tracing.project, api_key=key.get_secret_value() if key is not None else None
    )


@contextmanager
def open_source(settings: Settings, source: str, project: str | None) -> Iterator[TraceSource]:
    """The ``--source`` reader (Phoenix, or an OTLP-JSON file or folder), closed on the way out."""
    reader = _source(settings, source, project)
    try:
        yield reader
    finally:
        close = getattr(reader, "close", None)
        if callable(close):
            close()


def _phoenix_feedback(reader: PhoenixTraceSource, traces: list[TraceRecord]) -> list[FeedbackRecord]:
    roots = {t.root.span_id: t.trace_id for t in traces if t.root is not None}
    if not roots:
        return []
    from geode.runtime.serving.compare import feedback_from_annotations

    client = reader.client  # shares the reader's connections and its API key
    ids = list(roots)
    annotations: list[Any] = []
    for start in range(0, len(ids), 100):
        found = client.spans.get_span_annotations(
            span_ids=ids[start : start + 100], project_identifier=reader.project
        )
        annotations.extend(dict(a) for a in found)
    return feedback_from_annotations(annotations, roots)


def run_feedback(settings: Settings, reader: TraceSource, traces: list[TraceRecord]) -> list[FeedbackRecord]:
    """The local feedback log, plus the annotations on these runs' root spans when reading from Phoenix."""
    from geode.runtime.feedback import feedback_log_path
    from geode.runtime.serving.feedback import read_feedback
    from geode.traces.sources import PhoenixTraceSource

    feedback = list(read_feedback(feedback_log_path(settings)))
    if isinstance(reader, PhoenixTraceSource) and traces:
        feedback.extend(_phoenix_feedback(reader, traces))
    return feedback
