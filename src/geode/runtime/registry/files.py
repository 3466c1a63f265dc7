"""Canonical JSON, hashes and safe file I/O for the registry: JSON only, never pickle, writes atomic.

Every registry file (version files, the old layout's pointers) is read through :func:`_read_json_file`,
which refuses pickle by name and by magic bytes, caps the size and names what is wrong with a file.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from geode.errors import ProgramLoadError

MAX_FILE_BYTES = 64 * 1024 * 1024
"""Version files larger than this are refused (a compiled DSPy state is kilobytes to a few megabytes)."""
_PICKLE_SUFFIXES = frozenset({".pkl", ".pickle", ".pck", ".cloudpickle"})


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def is_pickle(path: Path, head: bytes | None = None) -> bool:
    """Whether a file is (or claims to be) a pickle: by suffix, or by the pickle protocol's magic bytes."""
    if path.suffix.lower() in _PICKLE_SUFFIXES:
        return True
    if head is None:
        try:
            with path.open("rb") as fh:
                head = fh.read(2)
        except OSError:
            return False
    # Protocols 2-5 start with PROTO (0x80) and the protocol number.
    return len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def _pickle_error(path: Path) -> ProgramLoadError:
    return ProgramLoadError(
        f"{str(path)!r} is a pickle file; Geode never loads pickle (unpickling can run arbitrary code)",
        hint="save program state as JSON (module.save('program.json') or geode compile) and import that",
    )


def _read_json_file(path: Path) -> Any:
    if is_pickle(path):
        raise _pickle_error(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError as err:
        raise ProgramLoadError(f"program file {str(path)!r} does not exist") from err
    if size > MAX_FILE_BYTES:
        raise ProgramLoadError(
            f"{str(path)!r} is {size} bytes, over the {MAX_FILE_BYTES}-byte limit for program files"
        )
    data = path.read_bytes()
    if is_pickle(path, data[:2]):
        raise _pickle_error(path)
    if not data.strip():
        raise ProgramLoadError(
            f"{str(path)!r} is empty", hint="the file was truncated; roll back or re-save it"
        )
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise ProgramLoadError(
            f"{str(path)!r} is not UTF-8 JSON (byte {err.start}); is it a program file?"
        ) from err
    except json.JSONDecodeError as err:
        raise ProgramLoadError(
            f"{str(path)!r} is not valid JSON ({err.msg} at line {err.lineno}, column {err.colno}); "
            "the file is corrupt or truncated",
            hint="roll back to another version, or re-save this one",
        ) from err


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
