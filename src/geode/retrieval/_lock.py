"""An exclusive, inter-process lock on an embedded store's folder, and the marker that says Geode made it."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import IO, Any

import portalocker

from geode.errors import RetrievalError, StoreUnavailableError

__all__ = ["MARKER_FILE", "StoreLock", "check_or_write_marker", "store_engine"]

MARKER_FILE = "geode-store.json"
"""Written into every embedded store folder Geode creates; a folder without it is never opened."""

_LOCK_FILE = "geode.lock"


class StoreLock:
    """Holds an exclusive lock on ``<folder>/geode.lock`` until :meth:`release`.

    Both embedded engines allow one process at a time (qdrant-client's local mode pickles into SQLite,
    qdrant-edge holds its write-ahead log). Taking our own lock first turns the engines' obscure failures
    into one clear message.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / _LOCK_FILE
        handle: IO[Any] = open(path, "a+")  # held open for the lock's lifetime
        try:
            portalocker.lock(handle, portalocker.LOCK_EX | portalocker.LOCK_NB)
        except portalocker.LockException:
            handle.close()
            raise StoreUnavailableError(
                f"the embedded store at {folder} is locked by another process",
                hint="stop the other Geode process using it (e.g. `geode serve`), or run a Qdrant server and "
                "set GEODE_RETRIEVAL_QDRANT_URL so several processes can share it",
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._handle: IO[Any] | None = handle

    def release(self) -> None:
        """Release the lock (idempotent)."""
        handle, self._handle = self._handle, None
        if handle is not None:
            try:
                portalocker.unlock(handle)
            finally:
                handle.close()


def store_engine(folder: Path) -> str | None:
    """The engine recorded in a Geode store folder's marker, or ``None`` if there is no readable marker."""
    try:
        found = json.loads((folder / MARKER_FILE).read_text()).get("engine")
    except (OSError, ValueError, AttributeError):
        return None
    return found if isinstance(found, str) else None


def check_or_write_marker(folder: Path, engine: str) -> None:
    """Refuse a non-empty folder Geode did not create; mark a new one as Geode's.

    qdrant-client's local storage unpickles what it finds, so opening a folder of unknown origin could run
    arbitrary code; the marker file makes sure Geode only opens stores it wrote itself.

    Raises:
        StoreUnavailableError: The folder holds data but no Geode marker, or was made by the other engine.
    """
    marker = folder / MARKER_FILE
    if marker.is_file():
        found = store_engine(folder)
        if found != engine:
            raise StoreUnavailableError(
                f"the embedded store at {folder} was written by engine {found!r}, not {engine!r}",
                hint="set GEODE_RETRIEVAL_ENGINE to the engine that wrote it, or use another Geode home",
            )
        return
    existing = [p for p in folder.iterdir() if p.name != _LOCK_FILE] if folder.is_dir() else []
    if existing:
        raise RetrievalError(
            f"{folder} holds files Geode did not write ({existing[0].name}, ...); refusing to open it as a store",
            hint="point the Geode home at an empty or Geode-created folder",
        )
    folder.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"engine": engine, "created_by": "geode", "format": 1}) + "\n")
