"""Registry pointers in the state database: each program's active version, routing, history and events.

A promotion, rollback or routing change is one transaction: lock the program's pointer row, check, write the new pointer
with the next revision and append its event. A process killed at any point leaves the committed
pointer (the old one, or the new one with its event), never none and never half; two promotions at once
run one after the other, the second seeing the first's result.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from geode.runtime.state.backend import SqlState
from geode.runtime.state.schema import tables

__all__ = ["Pointer", "PointerChange", "Route", "SqlPointers", "SqlVersionFiles"]

_P = tables.pointers
_E = tables.events
_V = tables.versions
_R = tables.routes


@dataclass(frozen=True)
class Route:
    """Candidate versions that share a program's traffic with the active one.

    A *canary* answers ``canary_share`` of requests (chosen by a hash of the session or request id); a
    *shadow* runs on a copy of ``shadow_share`` of requests after the active version answered, its
    result only traced.
    """

    canary: str | None = None
    canary_share: float = 0.0
    shadow: str | None = None
    shadow_share: float = 0.0

    @property
    def empty(self) -> bool:
        """No candidate: the active version answers everything."""
        return self.canary is None and self.shadow is None

    def without(self, version: str | None) -> Route:
        """This route with ``version`` no longer a candidate (it became the active version)."""
        canary = self.canary if self.canary != version else None
        shadow = self.shadow if self.shadow != version else None
        return Route(
            canary, self.canary_share if canary else 0.0, shadow, self.shadow_share if shadow else 0.0
        )

    def to_json(self) -> dict[str, Any]:
        """As recorded on events and printed by ``geode route``."""
        return {
            "canary": self.canary,
            "canary_share": self.canary_share,
            "shadow": self.shadow,
            "shadow_share": self.shadow_share,
        }


@dataclass(frozen=True)
class Pointer:
    """A program's active version and what was active before it."""

    program: str
    active: str | None
    """``None``: the base program serves."""
    history: tuple[str | None, ...] = ()
    """Previously active versions, oldest first."""
    revision: int = 0
    """Bumped by every change; 0 for a program never promoted."""
    route: Route = field(default_factory=Route)
    """Canary and shadow candidates (none by default)."""


@dataclass
class PointerChange:
    """An open change of one program's pointer; :meth:`set` it, or leave it unchanged."""

    current: Pointer
    new: Pointer | None = None
    event: dict[str, Any] = field(default_factory=dict[str, Any])

    def set(
        self,
        active: str | None,
        history: Sequence[str | None],
        event: Mapping[str, Any],
        *,
        route: Route | None = None,
    ) -> Pointer:
        """The pointer to commit, and the event that records why (``route``: default unchanged)."""
        self.new = Pointer(
            self.current.program,
            active,
            tuple(history),
            self.current.revision + 1,
            self.current.route if route is None else route,
        )
        self.event = {**event, "revision": self.new.revision}
        return self.new


class SqlPointers:
    """Registry pointers of every program, in the state database."""

    def __init__(self, state: SqlState) -> None:
        self.state = state

    def get(self, program: str) -> Pointer:
        """The program's pointer (revision 0, nothing active, when it was never promoted)."""
        with self.state.read() as conn:
            row = conn.execute(sa.select(_P).where(_P.c.program == program)).one_or_none()
            if row is None:
                return Pointer(program, None)
            route = _route(conn, program)
        return Pointer(program, row.active, tuple(json.loads(row.history)), row.revision, route)

    def revision(self, program: str) -> int:
        """The pointer's revision (0 when there is none): a cheap change marker."""
        with self.state.read_one() as conn:
            value = conn.execute(sa.select(_P.c.revision).where(_P.c.program == program)).scalar()
        return int(value or 0)

    def programs(self) -> list[str]:
        """Programs with a pointer."""
        with self.state.read() as conn:
            return list(conn.execute(sa.select(_P.c.program).order_by(_P.c.program)).scalars())

    def events(self, program: str) -> list[dict[str, Any]]:
        """The program's promotions and rollbacks, oldest first."""
        with self.state.read() as conn:
            rows = conn.execute(sa.select(_E.c.event).where(_E.c.program == program).order_by(_E.c.id))
            return [json.loads(r) for r in rows.scalars()]

    @contextlib.contextmanager
    def change(self, program: str) -> Iterator[PointerChange]:
        """Lock the program's pointer for a change; what :meth:`PointerChange.set` sets is committed on exit.

        Raising inside the block rolls back: the pointer stays as it was.
        """
        with self.state.write() as conn:
            conn.execute(
                self.state.insert_ignore(
                    _P,
                    {"program": program, "active": None, "history": "[]", "revision": 0, "updated_at": 0.0},
                )
            ).close()
            row = conn.execute(sa.select(_P).where(_P.c.program == program).with_for_update()).one()
            change = PointerChange(
                Pointer(
                    program, row.active, tuple(json.loads(row.history)), row.revision, _route(conn, program)
                )
            )
            yield change
            new = change.new
            if new is None:
                return
            conn.execute(
                _P.update()
                .where(_P.c.program == program)
                .values(
                    active=new.active,
                    history=json.dumps(list(new.history)),
                    revision=new.revision,
                    updated_at=time.time(),
                )
            )
            if new.route != change.current.route:
                conn.execute(_R.delete().where(_R.c.program == program))
                if not new.route.empty:
                    conn.execute(
                        _R.insert().values(program=program, updated_at=time.time(), **new.route.to_json())
                    )
            conn.execute(
                _E.insert().values(program=program, revision=new.revision, event=json.dumps(change.event))
            )

    def import_pointer(
        self,
        program: str,
        active: str | None,
        history: Sequence[str | None],
        events: Sequence[Mapping[str, Any]],
    ) -> bool:
        """Store a pointer read from the old file layout, unless the program already has one.

        Returns:
            Whether it was stored (``False``: the database already had a pointer for the program).
        """
        with self.state.write() as conn:
            exists = conn.execute(sa.select(_P.c.revision).where(_P.c.program == program)).scalar()
            if exists is not None:
                return False
            revision = max(1, len(events))
            conn.execute(
                _P.insert().values(
                    program=program,
                    active=active,
                    history=json.dumps(list(history)),
                    revision=revision,
                    updated_at=time.time(),
                )
            )
            for n, event in enumerate(events, start=1):
                conn.execute(
                    _E.insert().values(
                        program=program, revision=n, event=json.dumps({**event, "revision": n})
                    )
                )
        return True


def _route(conn: sa.Connection, program: str) -> Route:
    row = conn.execute(sa.select(_R).where(_R.c.program == program)).one_or_none()
    if row is None:
        return Route()
    return Route(row.canary, float(row.canary_share), row.shadow, float(row.shadow_share))


class SqlVersionFiles:
    """Registry version files in the state database, so every replica can materialise what is promoted.

    The registry still reads versions from its folder (and verifies their checksums there); this is the
    shared copy it fills the folder from.
    """

    def __init__(self, state: SqlState) -> None:
        self.state = state

    def store(self, program: str, version: str, doc: str) -> None:
        """Store (or replace, when scores were added) a version file's text."""
        values = {"program": program, "version": version, "doc": doc, "stored_at": time.time()}
        with self.state.write() as conn:  # replace = delete + insert in one transaction (two-column key)
            conn.execute(_V.delete().where(_V.c.program == program, _V.c.version == version))
            conn.execute(_V.insert().values(**values))

    def missing(self, program: str, have: set[str]) -> list[tuple[str, str]]:
        """``(version, text)`` of the program's stored versions not in ``have``."""
        with self.state.read() as conn:
            rows = conn.execute(sa.select(_V.c.version, _V.c.doc).where(_V.c.program == program)).all()
        return [(r.version, r.doc) for r in rows if r.version not in have]

    def known(self, program: str) -> set[str]:
        """The program's stored version ids."""
        with self.state.read() as conn:
            return set(conn.execute(sa.select(_V.c.version).where(_V.c.program == program)).scalars())

    def programs(self) -> list[str]:
        """Programs with stored versions."""
        with self.state.read() as conn:
            return list(conn.execute(sa.select(_V.c.program).distinct()).scalars())
