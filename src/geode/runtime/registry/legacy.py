"""The registry's layout before the state database: an ``<program>/active.json`` pointer file per program.

A registry that opens such a folder moves the pointer into the database once (see
:meth:`~geode.runtime.registry.ProgramRegistry`); this module reads and validates the old file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from geode.errors import ProgramLoadError
from geode.runtime.registry.files import _read_json_file
from geode.runtime.registry.version_file import _VERSION_RE

_POINTER_KEYS = frozenset({"format", "format_version", "program", "active", "history", "events"})


def _read_legacy_pointer(path: Path) -> dict[str, Any]:
    """An ``active.json`` of the file layout before the state database (Geode <= 0.x), validated."""
    doc = _read_json_file(path)
    where = str(path)
    if not isinstance(doc, dict) or not isinstance(doc.get("program"), str):
        raise ProgramLoadError(f"{where}: the active pointer must be a JSON object naming its program")
    unknown = sorted(set(doc) - _POINTER_KEYS)
    if unknown:
        raise ProgramLoadError(
            f"{where}: unknown field(s) {', '.join(map(repr, unknown))} in the active pointer"
        )
    active = doc.get("active")
    history = doc.get("history", [])
    if active is not None and (not isinstance(active, str) or not _VERSION_RE.match(active)):
        raise ProgramLoadError(f"{where}: malformed active version {active!r}")
    if not isinstance(history, list) or not all(
        h is None or (isinstance(h, str) and _VERSION_RE.match(h)) for h in history
    ):
        raise ProgramLoadError(f"{where}: malformed rollback history")
    events = doc.get("events", [])
    return {
        "program": doc["program"],
        "active": active,
        "history": list(history),
        "events": [e for e in events if isinstance(e, dict)] if isinstance(events, list) else [],
    }
