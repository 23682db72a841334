"""Moving the read models an earlier smeg kept inside the SQLite store's file to their own file.

Up to 2026-11-27 the read models and their tracking rows lived in the store's SQLite file; now
they default to a file beside it (``adapters.sql.read_models_beside``). Without this move, the
first start of the new version would rebuild every read model from the first event and, worse,
publish the whole history to the events exchange again (its position starts at 0).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import structlog
from sqlalchemy.engine import make_url

from adapters.parked_events import parked_events
from adapters.projections import create_tables, tracking
from adapters.sql import make_engine
from adapters.stats_view import delivery_stats_hourly, delivery_stats_minutely, failures_by_reason
from adapters.status_view import message_status

log = structlog.get_logger(__name__)

#: Every table of ours that lives with the read models.
TABLES = (
    tracking,
    message_status,
    delivery_stats_hourly,
    delivery_stats_minutely,
    failures_by_reason,
    parked_events,
)

#: Tables of read models that no longer exist (their facts come from each message's history).
RETIRED = ("stats_message_info", "failures_message_info")


def move_read_models(store_url: str, read_url: str) -> dict[str, int]:
    """Once: copy the read-model tables found in the store's SQLite file into ``read_url``'s.

    Only when both URLs are SQLite files and differ, the store's file has a tracking table, and
    the read-model file holds no tracking row yet. The copy is one ``IMMEDIATE`` transaction on
    the read-model file, so a second process starting at the same time waits and then finds the
    rows there. Then the read-model and retired tables are dropped from the store's file, so
    that nothing reads stale copies there. Returns rows copied per table.
    """
    store, read = make_url(store_url), make_url(read_url)
    if store.get_backend_name() != "sqlite" or read.get_backend_name() != "sqlite":
        return {}
    if not store.database or not read.database or Path(store.database) == Path(read.database):
        return {}
    if not Path(store.database).exists():
        return {}
    old_tables = _tables(store.database)
    if tracking.name not in old_tables:
        return {}
    engine = make_engine(read_url)
    try:
        create_tables(engine)
    finally:
        engine.dispose()
    copied = _copy(store.database, read.database, old_tables)
    if copied:
        log.warning("read_models_moved", to=read.database, rows=copied)
    # Stale from now on, even if an earlier start copied them and stopped before this drop.
    _drop(store.database, [name for name in (*(t.name for t in TABLES), *RETIRED) if name in old_tables])
    return copied


def _tables(path: str) -> dict[str, set[str]]:
    connection = sqlite3.connect(path, timeout=30)
    try:
        names = [row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return {name: _columns(connection, name) for name in names}
    finally:
        connection.close()


def _columns(connection: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in connection.execute(f'PRAGMA table_info("{table}")')}


def _copy(store_path: str, read_path: str, old_tables: dict[str, set[str]]) -> dict[str, int]:
    connection = sqlite3.connect(read_path, timeout=30, isolation_level=None)
    try:
        connection.execute("ATTACH DATABASE ? AS old", (store_path,))
        connection.execute("BEGIN IMMEDIATE")
        if connection.execute(f'SELECT count(*) FROM main."{tracking.name}"').fetchone()[0]:
            connection.execute("ROLLBACK")
            return {}
        copied: dict[str, int] = {}
        for table in TABLES:
            if table.name not in old_tables:
                continue
            columns = ", ".join(f'"{c.name}"' for c in table.columns if c.name in old_tables[table.name])
            cursor = connection.execute(
                f'INSERT INTO main."{table.name}" ({columns}) SELECT {columns} FROM old."{table.name}"'
            )
            copied[table.name] = cursor.rowcount
        connection.execute("COMMIT")
        return copied
    finally:
        connection.close()


def _drop(store_path: str, names: list[str]) -> None:
    connection = sqlite3.connect(store_path, timeout=30, isolation_level=None)
    try:
        connection.execute("BEGIN IMMEDIATE")
        for name in names:
            connection.execute(f'DROP TABLE IF EXISTS "{name}"')
        connection.execute("COMMIT")
    finally:
        connection.close()
