"""``module:attribute`` references, as uvicorn takes apps: the one importer programs, metrics and tools share.

A leaf like :mod:`geode.errors`: every layer may import it.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
from pathlib import Path

from geode.errors import GeodeError

__all__ = ["import_ref", "import_ref_module"]

_LOCK = threading.Lock()


def import_ref_module(module_part: str, ref: str, *, what: str, error: type[GeodeError]) -> object:
    """Import the module half of a reference: a dotted module name or a ``.py`` file path.

    A file is imported once per process (by resolved path), so two references into the same file
    share its module-level state.

    Args:
        module_part: ``package.module`` or ``path/to/file.py``.
        ref: The whole reference, for messages.
        what: What the reference names (``program``, ``metric``, ``tool``), for messages.
        error: The error type to raise.

    Raises:
        GeodeError: (of type ``error``) the file or module does not exist or cannot be imported.
    """
    if module_part.endswith(".py") or "/" in module_part:
        path = Path(module_part)
        if not path.is_file():
            raise error(f"no such file {str(path)!r} in {what} reference {ref!r}")
        mod_name = f"_geode_ref_{abs(hash(path.resolve()))}"
        with _LOCK:
            if mod_name in sys.modules:
                return sys.modules[mod_name]
            spec = importlib.util.spec_from_file_location(mod_name, path)
            if spec is None or spec.loader is None:
                raise error(f"cannot import {str(path)!r} for {what} reference {ref!r}")
            module = importlib.util.module_from_spec(spec)
            sys.modules[mod_name] = module
            try:
                spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[mod_name]  # a broken file must not look imported next time
                raise
            return module
    try:
        return importlib.import_module(module_part)
    except ModuleNotFoundError as err:
        if err.name and module_part.startswith(err.name):
            raise error(
                f"module {module_part!r} not found for {what} reference {ref!r}",
                hint="is it installed, or is the working directory on PYTHONPATH?",
            ) from err
        raise


def import_ref(ref: str, *, what: str, error: type[GeodeError]) -> object:
    """The object a ``module:attribute`` (or ``file.py:attr.sub``) reference names.

    Args:
        ref: The reference.
        what: What it names (``program``, ``metric``, ``tool``), for messages.
        error: The error type to raise.

    Raises:
        GeodeError: (of type ``error``) the reference is malformed or names nothing.
    """
    module_part, sep, attr_path = ref.rpartition(":")
    if not sep or not module_part or not attr_path:
        raise error(f"malformed {what} reference {ref!r}", hint="expected 'package.module:attribute'")
    obj = import_ref_module(module_part, ref, what=what, error=error)
    for attr in attr_path.split("."):
        try:
            obj = getattr(obj, attr)
        except AttributeError as err:
            raise error(f"{module_part!r} has no attribute {attr_path!r} ({what} {ref!r})") from err
    return obj
