"""Which workflow specs may load, and what they may import: HMAC signatures and a module allow-list.

A spec names Python objects (its agent, its tools) that loading it imports and runs, so a spec is
code. Two checks keep a spec from elsewhere from running what it likes:

- **Signatures.** :meth:`WorkflowSpec.save <geode.agents.crystallize.spec.WorkflowSpec.save>` signs a
  spec with HMAC-SHA256 under the operator's key; loading refuses a spec whose signature is missing or
  does not verify, unless :attr:`SpecTrust.allow_unsigned` says otherwise. Unlike the content hash,
  which anyone can recompute after an edit, a signature needs the key.
- **References.** A tool reference must name the agent's own tool of that name, or a module under one
  of :attr:`SpecTrust.allowed_modules`; ``agent_ref`` must be signed for, or allowed the same way.
  Nothing outside them is imported.

The runtime installs the process's default trust (:func:`use_spec_trust`): a key from settings or one
generated into ``GEODE_HOME`` on first use, so specs crystallized on one machine load there with no
set-up, while a spec from elsewhere needs that machine's key (or an explicit opt-in).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from geode.errors import ConfigError

__all__ = [
    "SIGNATURE_PREFIX",
    "SpecTrust",
    "current_spec_trust",
    "key_file",
    "module_allowed",
    "use_spec_trust",
]

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


def key_file(path: Path) -> bytes:
    """The signing key stored at ``path``, generated there (readable by its owner only) if absent.

    Two processes starting at once agree on one key: the file is created exclusively, and the loser
    reads the winner's.

    Raises:
        ConfigError: The file cannot be read or created, or holds no valid key.
    """
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        text = _create_key(path)
    except OSError as err:
        raise ConfigError(f"cannot read the workflow signing key {str(path)!r}: {err}") from err
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) < 16:
        raise ConfigError(
            f"{str(path)!r} holds no valid workflow signing key",
            hint="delete it to generate a new one (specs signed with the old key will need re-signing)",
        )
    return key


def _create_key(path: Path) -> str:
    text = secrets.token_hex(_KEY_BYTES)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text(encoding="ascii").strip()
    except OSError as err:
        raise ConfigError(f"cannot create the workflow signing key {str(path)!r}: {err}") from err
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(text + "\n")
    return text


_LOCK = threading.Lock()
_DEFAULT: Callable[[], SpecTrust] | None = None


def use_spec_trust(trust: SpecTrust | Callable[[], SpecTrust]) -> None:
    """Set the trust specs are saved and loaded with when none is passed (the runtime does this).

    Args:
        trust: A :class:`SpecTrust`, or a function returning one when a spec is saved or loaded (so
            settings read from the environment apply as they are then).
    """
    global _DEFAULT
    provider: Callable[[], SpecTrust]
    if isinstance(trust, SpecTrust):
        fixed = trust
        provider = lambda: fixed  # noqa: E731
    else:
        provider = trust
    with _LOCK:
        _DEFAULT = provider


def current_spec_trust() -> SpecTrust:
    """The trust specs are saved and loaded with when none is passed.

    Without one installed (``geode.runtime`` installs it on import), nothing is trusted: specs are
    saved unsigned and load only when passed an explicit :class:`SpecTrust`.
    """
    with _LOCK:
        provider = _DEFAULT
    return provider() if provider is not None else SpecTrust()
