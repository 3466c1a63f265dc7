"""The program registry: compiled program versions as JSON, an active pointer, promotion and rollback.

Layout: version files under ``settings.programs_dir`` (``<home>/programs``), the active pointer in the
state database (:mod:`geode.runtime.state`: ``<home>/state.db``, or PostgreSQL for a deployment)::

    <program>/versions/<version>.json   one file per version: a metadata header and the DSPy state
    state database                      per program: the active version, the rollback history, events

A version id is the first 16 hex digits of the SHA-256 of the program's canonical JSON state
(``module.dump_state()``), so the same compiled state always gets the same id. Each version file
also carries a checksum over its whole content: a file edited by hand, cut short or corrupted is
refused on load (``ProgramLoadError``) with the reason. Pickle is never read, whatever the file is
called. The checksum detects accidents; a ``mac`` (HMAC-SHA256 under the registry key, see
:mod:`geode.runtime.registry_trust`) detects a deliberate rewrite by someone who can write the folder
or the state database but does not hold the key. Files without a ``mac`` are refused until the
operator re-signs them (``geode versions <program> --sign-unsigned``).

A promotion or rollback is one database transaction (check, new pointer, event), so every process
sees the old or the new pointer, never half of one, and concurrent promotions serialise. The old
layout's ``<program>/active.json`` is moved into the database when a registry opens the folder.
Promotion is gated: a candidate must beat the active version by a
margin on the same held-out data unless forced. When the active version cannot be loaded, the
runtime keeps serving what it served before (see :class:`ActivePrograms`).

The modules, one job each: ``files`` (canonical JSON, hashes, safe reads and atomic writes; never
pickle), ``records`` (:class:`VersionInfo`, :class:`Score`, :class:`PromotionEvent`), ``states`` (a
program's DSPy state: version id, shape checks, loading into a copy), ``version_file`` (the file
format: checksum, MAC, validation), ``store`` (version files: save, list, load, sign, import),
``promotion`` (:class:`ProgramRegistry`: the active pointer, promotion, rollback, routes), ``legacy``
(the old ``active.json``), ``active`` (:class:`ActivePrograms`: what serves each program).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Names load on first use (PEP 562): `ServedProgram` and `ActivePrograms` must not pull in the
# promotion module, the state database and SQLAlchemy (0.11 s) for a `geode run` with nothing
# registered. The private names keep importable by this path what is not API: the file format's
# constants, and the helpers the demo (atomic writes) and the tests (hashing) import from here.
_EXPORTS: dict[str, str] = {
    "ActivePrograms": "geode.runtime.registry.active",
    "RoutedVersion": "geode.runtime.registry.active",
    "ServedProgram": "geode.runtime.registry.active",
    "MAX_FILE_BYTES": "geode.runtime.registry.files",
    "_atomic_write": "geode.runtime.registry.files",
    "_canonical": "geode.runtime.registry.files",
    "_sha256": "geode.runtime.registry.files",
    "is_pickle": "geode.runtime.registry.files",
    "ProgramRegistry": "geode.runtime.registry.promotion",
    "PromotionEvent": "geode.runtime.registry.records",
    "Score": "geode.runtime.registry.records",
    "VersionInfo": "geode.runtime.registry.records",
    "program_version": "geode.runtime.registry.states",
    "FORMAT": "geode.runtime.registry.version_file",
    "FORMAT_VERSION": "geode.runtime.registry.version_file",
}

__all__ = [
    "ActivePrograms",
    "ProgramRegistry",
    "PromotionEvent",
    "RoutedVersion",
    "Score",
    "ServedProgram",
    "VersionInfo",
    "is_pickle",
    "program_version",
]

if TYPE_CHECKING:  # for type checkers and IDEs; at run time names load on first use
    from geode.runtime.registry.active import ActivePrograms, RoutedVersion, ServedProgram
    from geode.runtime.registry.files import MAX_FILE_BYTES as MAX_FILE_BYTES
    from geode.runtime.registry.files import _atomic_write as _atomic_write
    from geode.runtime.registry.files import _canonical as _canonical
    from geode.runtime.registry.files import _sha256 as _sha256
    from geode.runtime.registry.files import is_pickle
    from geode.runtime.registry.promotion import ProgramRegistry
    from geode.runtime.registry.records import PromotionEvent, Score, VersionInfo
    from geode.runtime.registry.states import program_version
    from geode.runtime.registry.version_file import FORMAT as FORMAT
    from geode.runtime.registry.version_file import FORMAT_VERSION as FORMAT_VERSION


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
