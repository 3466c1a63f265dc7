"""The SQL state backend: one database (SQLite file or PostgreSQL) behind SQLAlchemy 2 Core.

Why SQLAlchemy Core and not psycopg directly: the embedded default (SQLite, no server) and the deployed
backend (PostgreSQL) must run the same statements, and SQLAlchemy compiles one Core query for both
(``ON CONFLICT``, ``FOR UPDATE``, schema names) where raw drivers differ in parameter style, upserts and
locking. It is already installed (Phoenix depends on it); psycopg 3 is only the PostgreSQL driver under it.
The ORM is not used: the rows are a handful of small tables read on the request path, and Core keeps
each statement visible and cheap.

Transactions: :meth:`SqlState.write` opens a write transaction that serialises writers across processes
(SQLite ``BEGIN IMMEDIATE`` takes the database's write lock; PostgreSQL callers lock the rows they
change with ``SELECT ... FOR UPDATE``). SQLite runs in WAL mode, so readers never wait for a writer, and
a process killed mid-transaction leaves the last committed state.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event, exc

from geode.errors import ConfigError
from geode.runtime.state import schema

__all__ = ["SqlState", "open_state", "sqlite_url"]

logger = logging.getLogger("geode.state")

_WRITE = "geode_write"


def sqlite_url(path: Path) -> str:
    """The SQLAlchemy URL of a SQLite file."""
    return f"sqlite:///{path.resolve()}"


def _normalise(url: str) -> str:
    # psycopg 3 is the PostgreSQL driver we ship; a bare postgresql:// URL means it, not psycopg2.
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


class SqlState:
    """Geode's shared state in one SQL database: sessions, served runs, feedback outbox, registry pointers.

    Args:
        url: A SQLAlchemy URL: ``sqlite:////abs/path/state.db`` or ``postgresql://user:pw@host/db``.
        schema_name: The PostgreSQL schema the tables live in (created if missing); ignored for SQLite.
        poll_s: How long a replica may serve from a cached registry pointer before asking the
            database again (the bound on how late a promotion made elsewhere is seen).

    Raises:
        ConfigError: The URL names another database, the server cannot be reached, or the schema is
            newer than this Geode.
    """

    def __init__(self, url: str, *, schema_name: str = "geode", poll_s: float = 1.0) -> None:
        self.url = _normalise(url)
        self.poll_s = poll_s
        parsed = sa.make_url(self.url)
        self.dialect = parsed.get_backend_name()
        if self.dialect not in ("sqlite", "postgresql"):
            raise ConfigError(
                f"unsupported state database {parsed.drivername!r}",
                hint="use sqlite:///<path> (the default) or postgresql://user:password@host/db",
            )
        self._insert = _dialect_insert(self.dialect)
        if self.dialect == "sqlite":
            if parsed.database:
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            engine = sa.create_engine(
                self.url, connect_args={"timeout": 30.0, "check_same_thread": False}, pool_size=8
            )
            event.listen(engine, "connect", _sqlite_connect)
            event.listen(engine, "begin", _sqlite_begin)
        else:
            try:
                import psycopg  # noqa: F401
            except ImportError as err:
                raise ConfigError(
                    "a PostgreSQL state database needs psycopg", hint="pip install 'geode[postgres]'"
                ) from err
            engine = sa.create_engine(self.url, pool_size=8, pool_pre_ping=True).execution_options(
                schema_translate_map={None: schema_name}
            )
        self.schema_name = schema_name
        self.engine = engine
        # PostgreSQL: a one-statement read needs no transaction of its own (the statement is its own
        # snapshot); outside one it saves the BEGIN and COMMIT round trips. SQLite's reads stay in the
        # BEGIN that Geode issues itself (see _sqlite_begin), which costs no round trip.
        self._single = (
            engine.execution_options(isolation_level="AUTOCOMMIT") if self.dialect == "postgresql" else engine
        )
        self._migrate()

    @property
    def where(self) -> str:
        """The database, with any password hidden (for messages and ``geode`` output)."""
        return sa.make_url(self.url).render_as_string(hide_password=True)

    def _migrate(self) -> None:
        try:
            with self.write() as conn:
                if self.dialect == "postgresql":
                    # One migrator at a time, and the schema before its tables.
                    conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext('geode_state_migrate'))"))
                    conn.execute(sa.text(f'CREATE SCHEMA IF NOT EXISTS "{self.schema_name}"'))
                applied = schema.migrate(conn)
        except exc.OperationalError as err:
            raise ConfigError(
                f"cannot open the state database {self.where}: {err.orig or err}",
                hint="check GEODE_STATE_URL (and that the database server is up)",
            ) from err
        if applied:
            logger.info("state database %s migrated to schema %s", self.where, applied[-1])

    # -- transactions ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def write(self) -> Iterator[sa.Connection]:
        """A write transaction, committed on exit (rolled back on error), serialised with other writers."""
        with self.engine.connect().execution_options(**{_WRITE: True}) as conn, conn.begin():
            yield conn

    @contextlib.contextmanager
    def read(self) -> Iterator[sa.Connection]:
        """A read-only transaction (a consistent snapshot of what it reads)."""
        with self.engine.connect() as conn, conn.begin():
            yield conn

    @contextlib.contextmanager
    def read_one(self) -> Iterator[sa.Connection]:
        """A connection for one read statement (the request path's reads): no transaction around it."""
        if self.dialect != "postgresql":
            with self.read() as conn:
                yield conn
            return
        with self._single.connect() as conn:
            yield conn

    def insert_ignore(self, table: sa.Table, values: Mapping[str, Any]) -> sa.Executable:
        """``INSERT ... ON CONFLICT DO NOTHING RETURNING <primary key>``: a row back when it was inserted.

        (``rowcount`` is not portable here: psycopg reports -1 for it.)
        """
        return (
            self._insert(table)
            .values(**values)
            .on_conflict_do_nothing()
            .returning(*table.primary_key.columns)
        )

    def upsert(self, table: sa.Table, values: Mapping[str, Any], key: str) -> sa.Executable:
        """``INSERT ... ON CONFLICT (key) DO UPDATE`` of every other column, for this database."""
        stmt = self._insert(table).values(**values)
        return stmt.on_conflict_do_update(
            index_elements=[key], set_={k: stmt.excluded[k] for k in values if k != key}
        )

    def insert_statement(self, table: sa.Table) -> Any:
        """This database's ``INSERT`` construct (with ``on_conflict_do_*``) for ``table``."""
        return self._insert(table)

    def upsert_many(self, table: sa.Table, columns: list[str], key: str) -> sa.Executable:
        """The :meth:`upsert` of ``columns`` with no values bound: execute it with a list of rows."""
        stmt = self._insert(table)
        return stmt.on_conflict_do_update(
            index_elements=[key], set_={c: stmt.excluded[c] for c in columns if c != key}
        )

    def close(self) -> None:
        """Release the connections."""
        self.engine.dispose()


def _dialect_insert(dialect: str) -> Any:
    """The ``insert`` (with ``on_conflict_do_*``) of the database in use.

    Imported for that database only: PostgreSQL's dialect costs 30 ms of a ``geode run`` start on
    the default SQLite home, which never uses it.
    """
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # The driver's own implicit transactions would start deferred; Geode issues BEGIN itself
    # (see _sqlite_begin), so writers take the lock up front instead of failing to upgrade later.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: a killed process loses nothing committed; only a power cut can lose the
        # last transactions, never corrupt the file. FULL would fsync on every session turn.
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
    finally:
        cursor.close()


def _sqlite_begin(conn: sa.Connection) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(_WRITE) else "BEGIN")


_OPEN: dict[tuple[str, str, float], SqlState] = {}
_OPEN_LOCK = threading.Lock()


def open_state(url: str, *, schema_name: str = "geode", poll_s: float = 1.0) -> SqlState:
    """The process's :class:`SqlState` for a URL (opened and migrated once, then shared).

    The runtime, its registry and its feedback outbox all use the same database; sharing one engine
    keeps one connection pool per database in the process.
    """
    key = (_normalise(url), schema_name, poll_s)
    with _OPEN_LOCK:
        state = _OPEN.get(key)
        if state is None:
            state = _OPEN[key] = SqlState(url, schema_name=schema_name, poll_s=poll_s)
        return state
