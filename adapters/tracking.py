"""Tracking positions: how far each follower of the event log has got (``smeg_tracking``).

Read models, the events exchange and the failed outbox each keep one row here, written in the
same transaction as what they did with the events, and moved only from the value read at the
start of a batch (``advance_tracking``): a second runner that moved it first makes ours roll back.
``create_tables`` creates these and the read models' tables (``adapters.sql.metadata``).
"""

from __future__ import annotations

import time

from sqlalchemy import Column, Connection, Engine, Integer, String, Table, insert, select, update
from sqlalchemy.exc import IntegrityError, InternalError, OperationalError, ProgrammingError

from adapters.sql import metadata

tracking = Table(
    "smeg_tracking",
    metadata,
    Column("projection", String(64), primary_key=True),
    Column("position", Integer, nullable=False),
)


def create_tables(engine: Engine) -> None:
    """Create our tables if missing and bring older ones up to date (each read model registers
    its ``upgrades`` in ``metadata.info``); a concurrent first start by another process is
    tolerated."""
    for attempt in range(3):
        try:
            metadata.create_all(engine)
            with engine.begin() as connection:
                for upgrade in metadata.info.get("upgrades", ()):
                    upgrade(connection)
            return
        except (IntegrityError, ProgrammingError, OperationalError, InternalError):
            if attempt == 2:
                raise
            time.sleep(0.2 * (attempt + 1))


def read_position(connection: Connection, name: str) -> int:
    """The tracked position of ``name`` (0 before its first batch)."""
    value = connection.scalar(select(tracking.c.position).where(tracking.c.projection == name))
    return int(value or 0)


def advance_tracking(connection: Connection, name: str, start: int, end: int) -> bool:
    """Move ``name`` from ``start`` to ``end``; False when another runner moved it first.

    A concurrent first insert raises IntegrityError, which rolls the caller's transaction back.
    """
    if start == 0:
        exists = connection.scalar(select(tracking.c.position).where(tracking.c.projection == name))
        if exists is None:
            connection.execute(insert(tracking).values(projection=name, position=end))
            return True
    result = connection.execute(
        update(tracking)
        .where(tracking.c.projection == name, tracking.c.position == start)
        .values(position=end)
    )
    return result.rowcount == 1
