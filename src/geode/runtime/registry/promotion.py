"""The program registry: version files plus the active pointer, promotion, rollback and routes.

The pointer (active version, rollback history, canary and shadow route, events) lives in the state
database (:mod:`geode.runtime.state`), so every process and replica on it agrees on what serves. A
promotion, rollback or route change is one database transaction (check, new pointer, event), so
every process sees the old or the new pointer, never half of one, and concurrent changes serialise.
Promotion is gated: a candidate must beat the active version by a margin on the same held-out data
unless forced.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Sequence
from typing import Any, Final

import dspy

from geode.errors import ProgramLoadError, VersionError
from geode.runtime.registry.legacy import _read_legacy_pointer
from geode.runtime.registry.records import PromotionEvent, Score, _now
from geode.runtime.registry.states import _apply_state
from geode.runtime.registry.store import VersionStore
from geode.runtime.registry.version_file import _VERSION_RE
from geode.runtime.state import Pointer, PointerChange, Route, SqlPointers, SqlState

logger = logging.getLogger(__name__)


class _Unset:
    """The type of :data:`_UNSET`: no ``expect_active`` given (``None`` means the base program)."""


_UNSET: Final = _Unset()


class ProgramRegistry(VersionStore):
    """Versions of compiled programs, stored as JSON under ``root``.

    Version files are :class:`~geode.runtime.registry.store.VersionStore`'s job; this class adds the
    active pointer, promotion, rollback and the canary and shadow route.

    Args:
        root: The registry folder (``settings.programs_dir``).
        key: The HMAC key version files are signed and verified with
            (:func:`geode.runtime.registry_trust.registry_key`); default: the key generated into
            ``<root>/../keys/registry-signing.key``, the one a :class:`~geode.runtime.Runtime` on that
            home uses when ``GEODE_STATE_SIGNING_KEY`` is not set.

    Example:
        >>> reg = ProgramRegistry(tmp_path / "programs")  # doctest: +SKIP
        >>> info = reg.save("qa", compiled, dataset_id=ds.id, metric="exact_match")  # doctest: +SKIP
        >>> reg.promote("qa", info.version, candidate_score=0.8, active_score=0.6)  # doctest: +SKIP
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        state: SqlState | None = None,
        poll_s: float | None = None,
        key: bytes | None = None,
    ) -> None:
        super().__init__(root, state=state, key=key)
        self.poll_s = self.state.poll_s if poll_s is None else poll_s
        self._pointers = SqlPointers(self.state)
        self._stamps: dict[str, tuple[float, int]] = {}
        self._migrate_legacy()

    def programs(self) -> list[str]:
        """Names of programs with at least one stored version or an active pointer."""
        return sorted(set(self._pointers.programs()) | self._stored_programs())

    # -- active pointer ------------------------------------------------------------------------
    #
    # The pointer (active version, rollback history, events) lives in the state database, so every
    # process and replica on it agrees on what serves; version files stay under the folder.

    def _migrate_legacy(self) -> None:
        # Pointers of the old layout (<program>/active.json) move into the database once; the file is
        # renamed, not deleted, so a downgrade can still find it by hand. Version files only this
        # folder has (saved before the state database) are shared too.
        if not self.root.is_dir():
            return
        for folder in sorted(p for p in self.root.glob("*/versions") if p.is_dir()):
            name = self._name_in(folder.parent)
            local = {p.stem: p for p in folder.glob("*.json") if _VERSION_RE.match(p.stem)}
            if name is None or not local:
                continue
            for version in sorted(set(local) - self._files.known(name)):
                with contextlib.suppress(OSError, UnicodeDecodeError):
                    self._files.store(name, version, local[version].read_text(encoding="utf-8"))
        for path in sorted(self.root.glob("*/active.json")):
            try:
                doc = _read_legacy_pointer(path)
            except ProgramLoadError as err:
                logger.error("registry: not migrating %s: %s", path, err)
                continue
            if self._pointers.import_pointer(doc["program"], doc["active"], doc["history"], doc["events"]):
                logger.info("registry: moved %s into the state database", path)
            with contextlib.suppress(OSError):
                path.replace(path.with_name("active.json.migrated"))

    def pointer_stamp(self, name: str) -> tuple[int] | None:
        """A cheap change marker of the program's active pointer (``None`` when it never had one).

        Read from the database at most once per ``poll_s`` per program: the bound on how long this
        process serves the previous version after a promotion made by another process.
        """
        now = time.monotonic()
        cached = self._stamps.get(name)
        if cached is not None and now - cached[0] < self.poll_s:
            revision = cached[1]
        else:
            revision = self._pointers.revision(name)
            self._stamps[name] = (now, revision)
        return (revision,) if revision else None

    def pointer(self, name: str) -> Pointer:
        """The program's active version, history and route, read together."""
        return self._pointers.get(name)

    def active(self, name: str) -> str | None:
        """The active version id, or ``None`` when the base program serves."""
        return self._pointers.get(name).active

    def history(self, name: str) -> list[str | None]:
        """Versions that were active before the current one, oldest first (``None``: the base program)."""
        return list(self._pointers.get(name).history)

    def events(self, name: str) -> list[dict[str, Any]]:
        """The pointer's event log (promotions and rollbacks), oldest first."""
        return self._pointers.events(name)

    def promote(
        self,
        name: str,
        version: str,
        *,
        candidate_score: float | None = None,
        active_score: float | None = None,
        margin: float = 0.05,
        force: bool = False,
        module: dspy.Module | None = None,
        reason: str | None = None,
        expect_active: str | _Unset | None = _UNSET,
        split: str = "held-out",
    ) -> PromotionEvent:
        """Make ``version`` the active version, if it beats the active one by ``margin``.

        The check and the change are one database transaction: two promotions at once (from any
        processes or replicas) run one after the other, and the second sees the first's result.

        Args:
            name: The program.
            version: The candidate (a full id or a unique prefix).
            candidate_score: The candidate's score on the held-out data, in ``[0, 1]``.
            active_score: The active version's score on the same data with the same metric.
            margin: How much better the candidate must be (0.05 = 5 points).
            force: Promote without the gate (the event records that it was forced).
            module: The program; when given, the version's state is test-loaded into a copy first.
            reason: Recorded on the event.
            expect_active: The version the caller compared against (``None``: the base program). When
                another promotion or rollback changed the active version since, nothing changes and
                :class:`VersionError` says what is active now.
            split: What the scores were measured on, for the gate's message (``geode demo`` decides on
                a validation split of its training questions).

        Raises:
            VersionError: Unknown version, already active, the active version is not ``expect_active``,
                scores missing, or the gate refused (the message gives both scores and the margin).
            ProgramLoadError: The candidate's file is invalid or does not fit ``module``. The active
                pointer is unchanged in every error case.
        """
        if margin < 0:
            raise VersionError(f"the promotion margin must be >= 0, got {margin}")
        info, state = self._load(name, version)
        if module is not None:
            _apply_state(module, state, str(info.path))
        with self._pointers.change(name) as change:
            current = change.current.active
            if not isinstance(expect_active, _Unset) and current != expect_active:
                raise VersionError(
                    f"not promoting {info.version} of {name!r}: the active version changed to "
                    f"{current or 'the base program'} (expected {expect_active or 'the base program'}); "
                    "another promotion or rollback won",
                    hint=f"check with geode versions {name}, then compare against the new active version",
                )
            if current == info.version:
                raise VersionError(f"{info.version} is already the active version of {name!r}")
            if not force:
                _gate(name, info.version, current, candidate_score, active_score, margin, split)
            event = PromotionEvent(
                action="promote",
                version=info.version,
                previous=current,
                at=_now(),
                forced=force,
                candidate_score=candidate_score,
                active_score=active_score,
                margin=margin,
                reason=reason,
            )
            event = _activate(change, info.version, [*change.current.history, current], event)
        self._stamps.pop(name, None)
        return event

    def rollback(self, name: str, *, module: dspy.Module | None = None) -> PromotionEvent:
        """Make the previously active version active again (one transaction, like :meth:`promote`).

        Raises:
            VersionError: There is nothing to roll back to.
            ProgramLoadError: The previous version's file is invalid (the active pointer is unchanged).
        """
        with self._pointers.change(name) as change:
            history = list(change.current.history)
            current = change.current.active
            if not history:
                raise VersionError(
                    f"program {name!r} has nothing to roll back to"
                    + (
                        f" (active: {current}, no earlier version)"
                        if current
                        else " (the base program is serving)"
                    )
                )
            target = history.pop()
            if target is not None:
                info, state = self._load(name, target)
                if module is not None:
                    _apply_state(module, state, str(info.path))
            event = PromotionEvent(action="rollback", version=target, previous=current, at=_now())
            event = _activate(change, target, history, event)
        self._stamps.pop(name, None)
        return event

    # -- canary and shadow routing -------------------------------------------------------------

    def route(self, name: str) -> Route:
        """The program's canary and shadow candidates (shared by every replica on the database)."""
        return self._pointers.get(name).route

    def set_route(
        self,
        name: str,
        *,
        canary: str | None = None,
        canary_share: float = 0.1,
        shadow: str | None = None,
        shadow_share: float = 1.0,
        module: dspy.Module | None = None,
        reason: str | None = None,
        expect_route: Route | None = None,
    ) -> PromotionEvent:
        """Replace the program's canary and shadow candidates (none of either: clear them).

        Like a promotion, one transaction on the program's pointer: every replica on the state
        database serves the new split within ``poll_s``, and the event log records it.

        Args:
            name: The program.
            canary: A version (id or unique prefix) answering ``canary_share`` of requests.
            canary_share: 0..1.
            shadow: A version run on a copy of ``shadow_share`` of requests, its answer only traced.
            shadow_share: 0..1.
            module: The program; when given, each candidate's state is test-loaded into a copy first.
            reason: Recorded on the event.
            expect_route: The route the caller read and changed; when another change landed since,
                nothing changes and :class:`VersionError` says so.

        Raises:
            VersionError: Unknown version, a candidate that is the active version, one version as both
                canary and shadow, a share outside 0..1, or the route is not ``expect_route``. The route
                is unchanged in every error case.
            ProgramLoadError: A candidate's file is invalid or does not fit ``module``.
        """
        route = self._new_route(name, canary, canary_share, shadow, shadow_share, module)
        with self._pointers.change(name) as change:
            current = change.current.active
            if expect_route is not None and change.current.route != expect_route:
                raise VersionError(
                    f"the route of {name!r} changed meanwhile; nothing was changed",
                    hint=f"check it with geode route {name}, then set it again",
                )
            for label, version in (("canary", route.canary), ("shadow", route.shadow)):
                if version is not None and version == current:
                    raise VersionError(
                        f"{version} is the active version of {name!r}; it cannot also be the {label}",
                        hint=f"pick another version (geode versions {name})",
                    )
            event = PromotionEvent(
                action="route",
                version=current,
                previous=current,
                at=_now(),
                reason=reason,
                route=route.to_json(),
            )
            change.set(current, change.current.history, event.to_json(), route=route)
        self._stamps.pop(name, None)
        return event

    def _new_route(
        self,
        name: str,
        canary: str | None,
        canary_share: float,
        shadow: str | None,
        shadow_share: float,
        module: dspy.Module | None,
    ) -> Route:
        # The route asked for, checked before the transaction: shares in 0..1, each candidate a
        # stored version that loads (into ``module`` when given), no version both canary and shadow.
        for label, share in (("canary", canary_share), ("shadow", shadow_share)):
            if not 0.0 <= share <= 1.0:
                raise VersionError(f"the {label} share must be between 0 and 1, got {share}")
        chosen: dict[str, str | None] = {"canary": None, "shadow": None}
        for label, version in (("canary", canary), ("shadow", shadow)):
            if version is None:
                continue
            info, state = self._load(name, self.resolve_version(name, version))
            if module is not None:
                _apply_state(module, state, str(info.path))
            chosen[label] = info.version
        if chosen["canary"] is not None and chosen["canary"] == chosen["shadow"]:
            raise VersionError(f"{chosen['canary']} cannot be both the canary and the shadow of {name!r}")
        return Route(
            chosen["canary"],
            canary_share if chosen["canary"] else 0.0,
            chosen["shadow"],
            shadow_share if chosen["shadow"] else 0.0,
        )

    def gate_scores(self, name: str, candidate: str, active: str) -> tuple[Score, Score] | None:
        """The latest pair of scores of two versions on the same examples with the same metric."""
        cand = self.info(name, candidate)
        act = self.info(name, active)
        for score in reversed(cand.scores):
            other = act.score_on(score.dataset_id, score.metric)
            if other is not None:
                return score, other
        return None


def _activate(
    change: PointerChange, version: str | None, history: Sequence[str | None], event: PromotionEvent
) -> PromotionEvent:
    """Make ``version`` active in ``change``, recording ``event``; returns the event as recorded.

    A candidate that becomes the active version stops being a candidate in the same transaction,
    and the event says how the route changed.
    """
    route = change.current.route.without(version)
    if route != change.current.route:
        event = dataclasses.replace(event, route=route.to_json())
    change.set(version, history, event.to_json(), route=route)
    return event


def _gate(
    name: str,
    candidate: str,
    current: str | None,
    candidate_score: float | None,
    active_score: float | None,
    margin: float,
    split: str = "held-out",
) -> None:
    active_label = current or "the base program"
    if candidate_score is None or active_score is None:
        raise VersionError(
            f"refusing to promote {candidate} of {name!r}: no scores of it and {active_label} on the same {split} data",
            hint="run geode compile (it scores both), pass --dataset and --metric to score them now, or --force",
        )
    gain = candidate_score - active_score
    if gain + 1e-9 < margin:
        raise VersionError(
            f"refusing to promote {candidate} of {name!r}: it scored {candidate_score:.1%} vs {active_score:.1%} "
            f"for {active_label} on the {split} data ({gain * 100:+.1f} points); promotion needs at least "
            f"{margin * 100:+.1f} points",
            hint="improve the candidate, lower --margin, or pass --force to promote anyway",
        )
