"""Which version answers: the active one, or a candidate on a canary share or in shadow.

A *canary* candidate answers ``share`` of requests; the choice is a hash of the session id (so a
conversation stays on one version) or of the request id. A *shadow* candidate answers nobody: it runs
on a copy of ``share`` of requests after the primary has answered, and its result is only traced. Both
versions carry their version on every span and response, so ``geode compare-versions`` can put them
side by side.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

import dspy

from geode.errors import ConfigError

__all__ = ["Candidate", "SplitMode", "in_share"]

SplitMode = Literal["canary", "shadow"]


def in_share(key: str, share: float, *, salt: str = "") -> bool:
    """Whether ``key`` falls in the first ``share`` of a uniform hash space (deterministic).

    Example:
        >>> in_share("session-1", 0.0), in_share("session-1", 1.0)
        (False, True)
    """
    if share <= 0:
        return False
    if share >= 1:
        return True
    digest = hashlib.blake2b(f"{salt}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < share


@dataclass(frozen=True)
class Candidate:
    """A second version of a hosted program and how it shares traffic.

    Args:
        module: The candidate's module (its version's state loaded).
        version: The candidate's version id.
        mode: ``canary`` (answers ``share`` of requests) or ``shadow`` (runs on a copy, answer discarded).
        share: Fraction of requests, 0..1.
    """

    module: dspy.Module
    version: str
    mode: SplitMode = "canary"
    share: float = 0.1

    def __post_init__(self) -> None:
        if not 0.0 <= self.share <= 1.0:
            raise ConfigError(f"the traffic share must be between 0 and 1, got {self.share}")
        if self.mode not in ("canary", "shadow"):
            raise ConfigError(f"traffic split mode must be 'canary' or 'shadow', got {self.mode!r}")
        if not self.version:
            raise ConfigError("a candidate needs a version id")
