"""``module:attribute`` references, as uvicorn takes apps: the one importer programs, metrics and tools share.

Also which references a file may make Geode import: :class:`SpecTrust` (a signing key for files that
name code, such as workflow specs, and an allow-list of module prefixes), and the process's default,
which the runtime installs from settings (:func:`use_spec_trust`).

A leaf like :mod:`geode.errors`: every layer may import it (and importing it costs nothing).
"""

from __future__ import annotations

import hashlib
import hmac
import importlib
import importlib.util
import os
import secrets
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from geode.errors import ConfigError, GeodeError

__all__ = [
    "SIGNATURE_PREFIX",
    "SpecTrust",
    "current_spec_trust",
    "import_ref",
    "import_ref_module",
    "key_file",
    "module_allowed",
    "use_spec_trust",
]

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


# -- which references a file may make Geode import ----------------------------------------------

SIGNATURE_PREFIX: Final = "hmac-sha256:"
_KEY_BYTES: Final = 32


@dataclass(frozen=True)
class SpecTrust:
    """What a workflow spec must satisfy to load, and the key that signs new ones.

    Attributes:
        key: The HMAC key specs are signed and checked with; ``None``: specs are saved unsigned and
            only load with ``allow_unsigned``.
        allow_unsigned: Load specs whose signature is missing or wrong (their references are still
            limited to the agent's tools and ``allowed_modules``).
        allowed_modules: Module prefixes (``mycompany.tools``) that tool references and an unsigned
            spec's ``agent_ref`` may import from, besides the agent's own tools.
    """

    key: bytes | None = None
    allow_unsigned: bool = False
    allowed_modules: tuple[str, ...] = ()

    def sign(self, payload: bytes) -> str:
        """The signature of ``payload`` (``""`` without a key)."""
        if self.key is None:
            return ""
        return SIGNATURE_PREFIX + hmac.new(self.key, payload, hashlib.sha256).hexdigest()

    def verifies(self, payload: bytes, signature: str) -> bool:
        """Whether ``signature`` is this key's signature of ``payload`` (compared in constant time)."""
        if self.key is None or not signature.startswith(SIGNATURE_PREFIX):
            return False
        return hmac.compare_digest(self.sign(payload), signature)


def module_allowed(module: str, prefixes: tuple[str, ...]) -> bool:
    """Whether ``module`` is one of ``prefixes`` or inside one (``a.b`` allows ``a.b.c``, not ``a.bc``).

    Example:
        >>> module_allowed("acme.tools.search", ("acme.tools",)), module_allowed("acme.toolsx", ("acme.tools",))
        (True, False)
    """
    return any(module == p or module.startswith(p + ".") for p in prefixes if p)


def key_file(path: Path, *, what: str = "workflow signing key") -> bytes:
    """The signing key stored at ``path``, generated there (readable by its owner only) if absent.

    ``what`` names the key in error messages.

    Two processes starting at once agree on one key: the file is created exclusively, and the loser
    reads the winner's.

    Raises:
        ConfigError: The file cannot be read or created, or holds no valid key.
    """
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        text = _create_key(path, what)
    except OSError as err:
        raise ConfigError(f"cannot read the {what} {str(path)!r}: {err}") from err
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) < 16:
        raise ConfigError(
            f"{str(path)!r} holds no valid {what}",
            hint="delete it to generate a new one (files signed with the old key will need re-signing)",
        )
    return key


def _create_key(path: Path, what: str) -> str:
    text = secrets.token_hex(_KEY_BYTES)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text(encoding="ascii").strip()
    except OSError as err:
        raise ConfigError(f"cannot create the {what} {str(path)!r}: {err}") from err
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(text + "\n")
    return text


_TRUST_LOCK = threading.Lock()
_default_trust: Callable[[], SpecTrust] | None = None


def use_spec_trust(trust: SpecTrust | Callable[[], SpecTrust]) -> None:
    """Set the trust specs are saved and loaded with when none is passed (the runtime does this).

    Args:
        trust: A :class:`SpecTrust`, or a function returning one when a spec is saved or loaded (so
            settings read from the environment apply as they are then).
    """
    global _default_trust
    provider: Callable[[], SpecTrust]
    if isinstance(trust, SpecTrust):
        fixed = trust
        provider = lambda: fixed  # noqa: E731
    else:
        provider = trust
    with _TRUST_LOCK:
        _default_trust = provider


def current_spec_trust() -> SpecTrust:
    """The trust specs are saved and loaded with when none is passed.

    Without one installed (``geode.runtime`` installs it on import), nothing is trusted: specs are
    saved unsigned and load only when passed an explicit :class:`SpecTrust`.
    """
    with _TRUST_LOCK:
        provider = _default_trust
    return provider() if provider is not None else SpecTrust()
