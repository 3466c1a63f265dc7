"""The version file format: its fields, the checksum and MAC over its content, writing and validating it.

One file per version: a metadata header and the DSPy state, with a checksum over both (accidents:
a file edited by hand, cut short or corrupted) and a ``mac``, an HMAC-SHA256 under the registry key
(:mod:`geode.runtime.registry_trust`: a deliberate rewrite by someone without the key). A file that
fails any check is refused on load (``ProgramLoadError``) with the reason.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from geode.errors import ProgramLoadError
from geode.runtime.registry.files import _canonical, _read_json_file, _sha256
from geode.runtime.registry.records import _metadata_from_json
from geode.runtime.registry.states import _check_state_shape, _version_id
from geode.runtime.registry_trust import verifies, version_mac

FORMAT = "geode.program-version"
FORMAT_VERSION = 1

_VERSION_KEYS = frozenset({"format", "format_version", "version", "checksum", "metadata", "state"})
_OPTIONAL_VERSION_KEYS = frozenset({"mac"})
_VERSION_RE = re.compile(r"^[0-9a-f]{16}$")


def _signed_content(version: str, metadata: Mapping[str, Any], state: Mapping[str, Any]) -> str:
    return _canonical({"version": version, "metadata": metadata, "state": state})


def _checksum(version: str, metadata: Mapping[str, Any], state: Mapping[str, Any]) -> str:
    return _sha256(_signed_content(version, metadata, state))


def _version_text(key: bytes, version: str, meta: Mapping[str, Any], state: Mapping[str, Any]) -> str:
    """The whole version file, checksummed and signed under ``key``."""
    doc = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "version": version,
        "checksum": _checksum(version, meta, state),
        "mac": version_mac(key, _signed_content(version, meta, state)),
        "metadata": meta,
        "state": state,
    }
    return json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n"


def _read_version_file(path: Path) -> tuple[Any, str, dict[str, Any], dict[str, Any]]:
    """A version file checked in everything but its MAC: its ``mac`` field, version id, metadata and state.

    Raises:
        ProgramLoadError: Not JSON, pickle, unknown or missing fields, another format, a checksum or
            version id that does not match the content, or a file name that is not its version id.
    """
    where = str(path)
    doc = _read_json_file(path)
    if not isinstance(doc, dict):
        raise ProgramLoadError(f"{where}: a program version must be a JSON object")
    _check_fields(doc, where)
    version, meta, state = doc["version"], doc["metadata"], doc["state"]
    if not isinstance(version, str) or not _VERSION_RE.match(version):
        raise ProgramLoadError(f"{where}: malformed version id {version!r}")
    meta = _metadata_from_json(meta, where)
    state = _check_state_shape(state, where)
    try:
        checksum = _checksum(version, meta, state)
    except ValueError as err:
        raise ProgramLoadError(f"{where}: the file holds values JSON cannot represent ({err})") from err
    if doc["checksum"] != checksum:
        raise ProgramLoadError(
            f"{where}: checksum mismatch: the file was modified after it was written (tampered or corrupted)",
            hint="roll back to another version (geode rollback) or recompile",
        )
    lm_artifact = meta.get("lm_artifact")
    if lm_artifact is not None and not isinstance(lm_artifact, str):
        raise ProgramLoadError(f"{where}: metadata.lm_artifact must be an artifact id")
    if _version_id(state, lm_artifact) != version:
        raise ProgramLoadError(
            f"{where}: the state does not hash to its version id {version}; the file was altered"
        )
    if path.stem != version:
        raise ProgramLoadError(f"{where}: the file name does not match its version id {version}")
    return doc.get("mac"), version, meta, state


def _check_fields(doc: Mapping[str, Any], where: str) -> None:
    # The envelope: exactly the known fields, this format and a format version this Geode reads.
    unknown = sorted(set(doc) - _VERSION_KEYS - _OPTIONAL_VERSION_KEYS)
    missing = sorted(_VERSION_KEYS - set(doc))
    if unknown:
        raise ProgramLoadError(
            f"{where}: unknown field(s) {', '.join(map(repr, unknown))}",
            hint="the file was edited or written by something else; roll back or re-save it",
        )
    if missing:
        raise ProgramLoadError(
            f"{where}: missing field(s) {', '.join(map(repr, missing))}; the file is incomplete"
        )
    if doc["format"] != FORMAT:
        raise ProgramLoadError(f"{where}: not a Geode program version (format {doc['format']!r})")
    if doc["format_version"] != FORMAT_VERSION:
        raise ProgramLoadError(
            f"{where}: program version format {doc['format_version']!r} is not supported (this Geode reads "
            f"{FORMAT_VERSION})",
            hint="upgrade Geode or recompile the program",
        )


def _check_mac(key: bytes, mac: Any, content: str, where: str) -> None:
    """Refuse a file whose ``mac`` is missing or does not verify under ``key``."""
    if mac is None:
        raise ProgramLoadError(
            f"{where}: the version file is not signed (written before registry keys, or its 'mac' "
            "was removed); unsigned files are not trusted",
            hint="if you trust this folder's files, re-sign them once: geode versions <program> "
            "--sign-unsigned",
        )
    if not isinstance(mac, str) or not verifies(key, content, mac):
        raise ProgramLoadError(
            f"{where}: MAC mismatch: the file was rewritten without the registry key, or signed "
            "with another key (tampered, or saved by a replica with another GEODE_STATE_SIGNING_KEY)",
            hint="replicas sharing a state database must share GEODE_STATE_SIGNING_KEY; otherwise "
            "roll back (geode rollback) or recompile",
        )
