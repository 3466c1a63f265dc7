"""The state database's tables and its versioned migrations.

The schema version lives in ``geode_state_meta`` (key ``schema_version``). :func:`migrate` applies the
missing steps of :data:`MIGRATIONS` in order, inside one transaction that holds the database's write
lock (SQLite: ``BEGIN IMMEDIATE``; PostgreSQL: a transaction-scoped advisory lock), so processes that
open the same database at once migrate it exactly once. A database newer than this Geode is refused
rather than written with an older idea of the schema.

Steps are plain SQLAlchemy Core DDL (no Alembic environment): the store is opened by every ``geode``
command and every replica, and must migrate itself on open, offline, from the installed package alone.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import sqlalchemy as sa

from geode.errors import ConfigError

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "metadata", "migrate", "tables"]

metadata = sa.MetaData()

meta = sa.Table(
    "geode_state_meta",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

sessions = sa.Table(
    "geode_sessions",
    metadata,
    # "<caller>\x1f<session id>": a session belongs to the API key that began it (see the serving app).
    sa.Column("key", sa.String(512), primary_key=True),
    sa.Column("touched", sa.Float, nullable=False),
    sa.Column("turns", sa.Text, nullable=False),
    sa.Index("geode_sessions_touched", "touched"),
)

served_runs = sa.Table(
    "geode_served_runs",
    metadata,
    sa.Column("trace_id", sa.String(32), primary_key=True),
    sa.Column("span_id", sa.String(16), nullable=False),
    sa.Column("program", sa.String(200), nullable=False),
    sa.Column("version", sa.String(32)),
    sa.Column("caller", sa.String(200), nullable=False),
    sa.Column("at", sa.Float, nullable=False),
    sa.Index("geode_served_runs_at", "at"),
)

outbox = sa.Table(
    "geode_feedback_outbox",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("record", sa.Text, nullable=False),
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("claimed_until", sa.Float, nullable=False, server_default="0"),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
)

pointers = sa.Table(
    "geode_registry_pointers",
    metadata,
    sa.Column("program", sa.String(200), primary_key=True),
    sa.Column("active", sa.String(16)),
    sa.Column("history", sa.Text, nullable=False),
    sa.Column("revision", sa.Integer, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)

events = sa.Table(
    "geode_registry_events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("program", sa.String(200), nullable=False),
    sa.Column("revision", sa.Integer, nullable=False),
    sa.Column("event", sa.Text, nullable=False),
    sa.Index("geode_registry_events_program", "program", "id"),
)

versions = sa.Table(
    "geode_registry_versions",
    metadata,
    # The version file's exact text: its checksum is verified on load wherever it is materialised.
    sa.Column("program", sa.String(200), primary_key=True),
    sa.Column("version", sa.String(16), primary_key=True),
    sa.Column("doc", sa.Text, nullable=False),
    sa.Column("stored_at", sa.Float, nullable=False),
)

routes = sa.Table(
    "geode_registry_routes",
    metadata,
    # Candidates besides the active version, changed with the pointer row locked (its revision bumped),
    # so a replica notices a new split with the same poll that notices a promotion.
    sa.Column("program", sa.String(200), primary_key=True),
    sa.Column("canary", sa.String(16)),
    sa.Column("canary_share", sa.Float, nullable=False, server_default="0"),
    sa.Column("shadow", sa.String(16)),
    sa.Column("shadow_share", sa.Float, nullable=False, server_default="0"),
    sa.Column("updated_at", sa.Float, nullable=False),
)


class _Tables:
    meta = meta
    sessions = sessions
    served_runs = served_runs
    outbox = outbox
    pointers = pointers
    events = events
    versions = versions
    routes = routes


tables: Final = _Tables()
"""The tables by role (``tables.sessions`` ...)."""


def _v1(conn: sa.Connection) -> None:
    metadata.create_all(conn, tables=[sessions, served_runs, outbox, pointers, events], checkfirst=True)


def _v2(conn: sa.Connection) -> None:
    versions.create(conn, checkfirst=True)


def _v3(conn: sa.Connection) -> None:
    routes.create(conn, checkfirst=True)


MIGRATIONS: Final[tuple[tuple[int, str, Callable[[sa.Connection], None]], ...]] = (
    (1, "sessions, served runs, feedback outbox, registry pointers and events", _v1),
    (2, "registry version files, shared so replicas on other machines can load what is promoted", _v2),
    (3, "canary and shadow routing, shared so every replica splits traffic alike", _v3),
)
"""Ordered ``(version, description, step)``; append a step to change the schema, never edit one."""

SCHEMA_VERSION: Final = MIGRATIONS[-1][0]


def current_version(conn: sa.Connection) -> int:
    """The schema version recorded in the database (0 for an empty one)."""
    value = conn.execute(sa.select(meta.c.value).where(meta.c.key == "schema_version")).scalar()
    return int(value) if value is not None else 0


def migrate(conn: sa.Connection) -> list[int]:
    """Bring the schema up to :data:`SCHEMA_VERSION` within the caller's (locked) transaction.

    Returns:
        The versions applied (empty when the database was current).

    Raises:
        ConfigError: The database was written by a newer Geode.
    """
    meta.create(conn, checkfirst=True)
    found = current_version(conn)
    if found > SCHEMA_VERSION:
        raise ConfigError(
            f"the state database has schema version {found}, newer than this Geode's {SCHEMA_VERSION}",
            hint="upgrade Geode on this machine, or point GEODE_STATE_URL at another database",
        )
    applied: list[int] = []
    for version, _, step in MIGRATIONS:
        if version > found:
            step(conn)
            applied.append(version)
    if applied:
        stmt = (
            meta.update().where(meta.c.key == "schema_version").values(value=str(SCHEMA_VERSION))
            if found
            else meta.insert().values(key="schema_version", value=str(SCHEMA_VERSION))
        )
        conn.execute(stmt)
    return applied
