"""Helpers shared by the CLI command modules: building a Runtime, parsing ``key=value`` inputs."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import typer

from geode.errors import InputError
from geode.runtime.runtime import Runtime
from geode.runtime.settings import LMSettings, Settings

__all__ = ["ALLOW_CACHE_OPTION", "LM_OPTION", "make_runtime", "make_settings", "parse_inputs"]

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
