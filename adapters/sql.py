"""SQLAlchemy engines for our own tables (read models, tracking), beside the event store.

One place decides timeouts and schema for every SQL connection smeg opens through SQLAlchemy.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, MetaData, create_engine, event
from sqlalchemy.engine import make_url

metadata = MetaData()


def make_engine(url: str, *, schema: str = "", statement_timeout_s: float = 30.0) -> Engine:
    """An engine with connect and statement timeouts (a silent network must not hang a write)."""
    parsed = make_url(url)
    connect_args: dict[str, Any] = {}
    options: dict[str, Any] = {}
    if parsed.get_backend_name() == "sqlite":
        connect_args = {"timeout": 10, "check_same_thread": False}
        if not parsed.database or parsed.database == ":memory:":
            raise ValueError("read models need a file database (sqlite:///path.db)")
    else:
        connect_args = {
            "connect_timeout": 5,
            "options": f"-c statement_timeout={int(statement_timeout_s * 1000)}",
            "keepalives": 1,
            "keepalives_idle": 10,
            "keepalives_interval": 5,
            "keepalives_count": 3,
            "tcp_user_timeout": int(statement_timeout_s * 1000),
        }
        if schema:
            options["schema_translate_map"] = {None: schema}
    engine = create_engine(parsed, connect_args=connect_args, pool_pre_ping=True, execution_options=options)
    if parsed.get_backend_name() == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()
