"""Geode's shared state: sessions, served runs, the feedback outbox and registry pointers in one database.

The embedded default is a SQLite file in the Geode home (``<home>/state.db``), so every process on one
machine with the same home shares it; deployments point ``GEODE_STATE_URL`` at PostgreSQL so every
replica does. :class:`SqlState` is the database (SQLAlchemy 2 Core, migrated on open); the parts are
small views over it: :class:`SqlPointers` (registry), :class:`SqlOutbox` (feedback),
:class:`SqlRunIndex` (served runs, written off the request path by :class:`RunRecorder`), :class:`SqlVersionFiles` (registry version files) and ``geode.runtime.state.sessions.SqlSessionStore`` (sessions,
imported from its module because it pulls in the serving package).
"""

from geode.runtime.state.backend import SqlState, open_state, sqlite_url
from geode.runtime.state.outbox import SqlOutbox
from geode.runtime.state.pointers import Pointer, PointerChange, Route, SqlPointers, SqlVersionFiles
from geode.runtime.state.runs import RunRecorder, ServedRun, SqlRunIndex

__all__ = [
    "Pointer",
    "PointerChange",
    "Route",
    "RunRecorder",
    "ServedRun",
    "SqlOutbox",
    "SqlPointers",
    "SqlRunIndex",
    "SqlState",
    "SqlVersionFiles",
    "open_state",
    "sqlite_url",
]
