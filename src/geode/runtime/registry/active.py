"""Active programs: the module that answers for each program now, reloaded when its pointer changes.

When the active version cannot be loaded, the runtime keeps serving what it served before; the route's
canary and shadow are loaded beside it, and a broken candidate is logged, not served.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import dspy

from geode.errors import GeodeError, ProgramLoadError, VersionError
from geode.runtime.programs import ResolvedProgram

if TYPE_CHECKING:
    # For types only: importing the registry imports the state database (SQLAlchemy), which a
    # `geode run` with nothing registered never opens (see Runtime.serve).
    from geode.runtime.registry.promotion import ProgramRegistry

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RoutedVersion:
    """A candidate version the program's route serves beside the active one."""

    module: dspy.Module
    version: str
    mode: str
    """``canary`` (answers ``share`` of requests) or ``shadow`` (runs on a copy, only traced)."""
    share: float


@dataclass(frozen=True)
class ServedProgram:
    """The module that answers for a program, and the version it is."""

    name: str
    module: dspy.Module
    version: str | None
    """The registry version serving, ``None`` for the base program."""
    problem: str | None = None
    """Why the active version is not the one serving (it failed to load), if so."""
    canary: RoutedVersion | None = None
    """The route's canary, loaded (``geode route``), if any."""
    shadow: RoutedVersion | None = None
    """The route's shadow, loaded, if any."""


@dataclass
class _Slot:
    base: dspy.Module
    stamp: tuple[int] | None
    served: ServedProgram


class ActivePrograms:
    """Serves each program's active registry version, reloading when the active pointer changes.

    When the active version cannot be loaded (corrupt, tampered, pickle, does not fit the program),
    the version served before keeps serving; on a first load, the most recent loadable version of the
    rollback history serves, else the base program. The problem is logged once and kept on
    :attr:`ServedProgram.problem`.

    A version that names an LM artifact is bound to the LM ``lm_loader`` builds for it (the runtime's
    loader reads the artifact store); without a loader, or when the artifact cannot be loaded, the
    version counts as not loadable.
    """

    def __init__(
        self, registry: ProgramRegistry, *, lm_loader: Callable[[str], dspy.BaseLM] | None = None
    ) -> None:
        self.registry = registry
        self.lm_loader = lm_loader
        self._slots: dict[str, _Slot] = {}
        self._lock = threading.Lock()

    def load_version(self, name: str, version: str, base: dspy.Module) -> dspy.Module:
        """A copy of ``base`` with the version's state, bound to its LM artifact if it names one.

        Raises:
            VersionError: No such version.
            ProgramLoadError: The file is invalid, or its LM artifact cannot be loaded.
        """
        module = self.registry.load_into(name, version, base)
        artifact = self.registry.info(name, version).lm_artifact
        if artifact:
            if self.lm_loader is None:
                raise ProgramLoadError(
                    f"version {version} runs on LM artifact {artifact}; nothing here loads one"
                )
            try:
                lm = self.lm_loader(artifact)
            except GeodeError as err:
                raise ProgramLoadError(
                    f"version {version}: its LM artifact {artifact} cannot be loaded ({err})"
                ) from err
            module.set_lm(lm)
        return module

    def get(self, resolved: ResolvedProgram) -> ServedProgram:
        """The served program for a resolved reference."""
        name = resolved.name
        stamp = self.registry.pointer_stamp(name)
        slot = self._slots.get(name)
        if slot is not None and slot.stamp == stamp and slot.base is resolved.module:
            return slot.served
        with self._lock:
            slot = self._slots.get(name)
            if slot is not None and slot.stamp == stamp and slot.base is resolved.module:
                return slot.served
            previous = slot.served if slot is not None and slot.base is resolved.module else None
            served = (
                self._load(resolved, previous)
                if stamp is not None
                else ServedProgram(name, resolved.module, None)
            )
            self._slots[name] = _Slot(resolved.module, stamp, served)
            return served

    def _load(self, resolved: ResolvedProgram, previous: ServedProgram | None) -> ServedProgram:
        served = self._load_active(resolved, previous)
        try:
            route = self.registry.route(resolved.name)
        except ProgramLoadError:
            return served
        canary = self._candidate(resolved, route.canary, "canary", route.canary_share)
        shadow = self._candidate(resolved, route.shadow, "shadow", route.shadow_share)
        return dataclasses.replace(served, canary=canary, shadow=shadow) if canary or shadow else served

    def _candidate(
        self, resolved: ResolvedProgram, version: str | None, mode: str, share: float
    ) -> RoutedVersion | None:
        if version is None:
            return None
        try:
            return RoutedVersion(
                self.load_version(resolved.name, version, resolved.module), version, mode, share
            )
        except (ProgramLoadError, VersionError) as err:
            # The active version keeps answering everything: a broken candidate is logged, not served.
            logger.error(
                "program %r: %s %s failed to load, not served: %s", resolved.name, mode, version, err
            )
            return None

    def _load_active(self, resolved: ResolvedProgram, previous: ServedProgram | None) -> ServedProgram:
        name = resolved.name
        try:
            pointer = self.registry.pointer(name)
        except ProgramLoadError as err:
            return self._fallback(resolved, previous, [], f"the active pointer is unreadable: {err}")
        active, history = pointer.active, list(pointer.history)
        if active is None:
            return ServedProgram(name, resolved.module, None)
        try:
            module = self.load_version(name, active, resolved.module)
            return ServedProgram(name, module, active)
        except (ProgramLoadError, VersionError) as err:
            return self._fallback(
                resolved, previous, history, f"active version {active} failed to load: {err}"
            )

    def _fallback(
        self,
        resolved: ResolvedProgram,
        previous: ServedProgram | None,
        history: Sequence[str | None],
        problem: str,
    ) -> ServedProgram:
        name = resolved.name
        if previous is not None:
            logger.error(
                "program %r: %s; still serving %s", name, problem, previous.version or "the base program"
            )
            return ServedProgram(name, previous.module, previous.version, problem)
        for candidate in reversed(history):
            if candidate is None:
                break
            try:
                module = self.load_version(name, candidate, resolved.module)
            except (ProgramLoadError, VersionError):
                continue
            logger.error("program %r: %s; serving the previously active version %s", name, problem, candidate)
            return ServedProgram(name, module, candidate, problem)
        logger.error("program %r: %s; serving the base program", name, problem)
        return ServedProgram(name, resolved.module, None, problem)
