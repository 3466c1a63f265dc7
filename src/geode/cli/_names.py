"""One name per program in the commands that read runs: resolve what the user typed, list what exists.

A program is recorded under one name (see :func:`geode.runtime.programs.resolve`), with the reference it
was run by and its class name as aliases. ``trace show --program``, ``mine``, ``crystallize`` and
``compare-versions`` accept any of them, from any trace source (Phoenix included): a reference that
imports is turned into the program's name first, so ``app.py:agent`` finds the runs of
``Agent(name="helper")`` however they were started; an alias two programs share is refused, naming both.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace

from geode.errors import ConfigError, GeodeError
from geode.runtime.programs import resolve
from geode.traces.records import TraceRecord
from geode.traces.sources import TraceFilter, TraceSource, programs_with_runs

__all__ = [
    "known_programs",
    "names_of",
    "no_runs_hint",
    "one_program",
    "program_name",
    "require_one_program",
]

_LOOKED_AT = 200
"""Recent traces read to list the programs a source has runs of."""


def program_name(ref: str) -> str:
    """The recorded name of the program ``ref`` names; ``ref`` itself when it does not resolve here.

    A name recorded elsewhere (another machine, a program since renamed) is taken as given.
    """
    try:
        return resolve(ref).name
    except GeodeError:
        return ref
    except Exception:  # the user's module failed to import: its runs may still be readable by name
        return ref


def known_programs(reader: TraceSource, limit: int = _LOOKED_AT) -> list[str]:
    """Program names (with aliases in brackets) of the source's recent runs, most recent first."""
    try:
        return [str(p) for p in programs_with_runs(reader, TraceFilter(limit=limit))]
    except GeodeError:
        return []


def no_runs_hint(reader: TraceSource) -> str:
    """``programs with runs there: a, b (also x), ...`` for a "no runs" error, or how to record some."""
    names = known_programs(reader)
    if not names:
        return "no program has runs there; record some through geode.Runtime with tracing on"
    shown = ", ".join(names[:12]) + (f" and {len(names) - 12} more" if len(names) > 12 else "")
    return f"programs with runs there: {shown}"


def require_one_program(reader: TraceSource, asked: str, within: TraceFilter | None = None) -> None:
    """Refuse ``asked`` when it is an alias of two or more programs with runs in ``reader``.

    Reads only which programs the runs belong to (root spans, on Phoenix), over the runs ``within``
    selects (its program is replaced by ``asked``) or else the newest :data:`_LOOKED_AT` runs.

    Raises:
        ConfigError: ``asked`` names runs of several programs (the message lists them).
    """
    window = replace(within or TraceFilter(limit=_LOOKED_AT), program=asked)
    _refuse_several(asked, [p.name for p in programs_with_runs(reader, window)])


def one_program(traces: Iterable[TraceRecord], asked: str) -> list[TraceRecord]:
    """The traces, refusing when ``asked`` is an alias shared by runs of two or more programs.

    Raises:
        ConfigError: The runs found belong to several programs (the message lists them).
    """
    found = list(traces)
    _refuse_several(asked, names_of(found))
    return found


def names_of(traces: Sequence[TraceRecord]) -> list[str]:
    """Distinct program names of ``traces``, in order."""
    return list(dict.fromkeys(t.program_names[0] for t in traces if t.program_names))


def _refuse_several(asked: str, names: Sequence[str]) -> None:
    if len(set(names)) > 1:
        listed = ", ".join(sorted(set(names)))
        raise ConfigError(
            f"{asked!r} names runs of {len(set(names))} programs: {listed}", hint="use one of these names"
        )
