"""The program registry's keyed integrity check: an HMAC-SHA256 over each version file's content.

A version file's plain ``checksum`` catches accidents, but anyone who can write the folder (or the
state database's ``version_files`` table) can rewrite a file and recompute it. The ``mac`` needs the
registry key as well: ``GEODE_STATE_SIGNING_KEY`` (hex; every replica on one state database sets the
same one), else a key generated into ``GEODE_HOME/keys/registry-signing.key`` on first use.

A file without a ``mac`` (written before keyed files) is refused, not accepted and re-signed: a
writer who strips the field would otherwise get any content trusted. The operator re-signs such
files once, deliberately, with ``geode versions <program> --sign-unsigned`` (only files whose plain
checksum and version id still verify are signed).
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path
from typing import Final

from geode.refs import key_file
from geode.runtime.settings import Settings

__all__ = ["MAC_PREFIX", "registry_key", "registry_key_at", "verifies", "version_mac"]

MAC_PREFIX: Final = "hmac-sha256:"
# Domain separation: the same key material never yields a registry MAC equal to another HMAC of it.
_CONTEXT: Final = b"geode.program-version.v1\x00"


def version_mac(key: bytes, canonical: str) -> str:
    """The MAC of a version file's canonical content (``{"version", "metadata", "state"}``)."""
    return MAC_PREFIX + hmac.new(key, _CONTEXT + canonical.encode("utf-8"), hashlib.sha256).hexdigest()


def verifies(key: bytes, canonical: str, mac: str) -> bool:
    """Whether ``mac`` is this key's MAC of ``canonical`` (compared in constant time)."""
    return hmac.compare_digest(version_mac(key, canonical), mac)


def registry_key_at(home: Path) -> bytes:
    """The generated registry key of a home (``<home>/keys/registry-signing.key``), created if absent.

    Raises:
        ConfigError: The key file cannot be read or created, or holds no valid key.
    """
    return key_file(home / "keys" / "registry-signing.key", what="registry signing key")


def registry_key(settings: Settings) -> bytes:
    """The registry key ``settings`` name: ``GEODE_STATE_SIGNING_KEY``, else the home's generated one.

    Raises:
        ConfigError: The generated key file cannot be read or created.
    """
    if settings.state.signing_key is not None:
        return bytes.fromhex(settings.state.signing_key.get_secret_value())
    return registry_key_at(settings.home)
