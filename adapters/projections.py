"""Projections: SQL read models that follow the event log, exactly once.

Each batch of events is applied and the projection's tracking position advanced in ONE
transaction; the position only moves forward from the value read at the start of the batch, so
a second runner (another node) that applied the same batch first makes ours roll back.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import structlog
from eventsourcing.domain import DomainEvent
from sqlalchemy import Column, Connection, Engine, Integer, String, Table, insert, select, update
from sqlalchemy.exc import IntegrityError

from adapters.event_store import MessageStore
from adapters.sql import metadata

log = structlog.get_logger(__name__)

tracking = Table(
    "smeg_tracking",
    metadata,
    Column("projection", String(64), primary_key=True),
    Column("position", Integer, nullable=False),
)


class Projection(Protocol):
    """A read model: its name, and how a batch of events changes its tables."""

    name: str

    def apply(self, connection: Connection, events: Sequence[DomainEvent]) -> None:
        """Apply the events (store order) inside the caller's transaction."""
        ...

    def clear(self, connection: Connection) -> None:
        """Delete every row (for a rebuild)."""
        ...


class ProjectionRunner:
    """Follows the store's log and applies it to the projections, batch by batch.

    Args:
        store: the event store to read.
        engine: where the read models and the tracking rows live.
        projections: what to maintain; all share one position.
        name: the tracking name.
    """

    def __init__(
        self,
        store: MessageStore,
        engine: Engine,
        projections: Sequence[Projection],
        *,
        name: str = "read_models",
        batch: int = 1000,
    ) -> None:
        self.store, self.engine, self.projections = store, engine, projections
        self.name, self.batch = name, batch
        metadata.create_all(engine)

    def position(self) -> int:
        with self.engine.connect() as connection:
            return read_position(connection, self.name)

    def step(self) -> int:
        """Apply one batch; return how many events it held (0 when caught up or lost a race)."""
        start = self.position()
        notifications = self.store.read_log(start, self.batch)
        if not notifications:
            return 0
        events = [self.store.decode(n) for n in notifications]
        end = notifications[-1].id
        try:
            with self.engine.begin() as connection:
                if not self._advance(connection, start, end):
                    return 0
                for projection in self.projections:
                    projection.apply(connection, events)
        except IntegrityError:
            log.info("projection_race_lost", projection=self.name, position=start)
            return 0
        return len(events)

    def catch_up(self) -> int:
        """Apply batches until the log's head; return how many events were applied."""
        total = 0
        while applied := self.step():
            total += applied
        return total

    def rebuild(self) -> int:
        """Clear every read model and the position, then replay the whole log."""
        with self.engine.begin() as connection:
            for projection in self.projections:
                projection.clear(connection)
            connection.execute(tracking.delete().where(tracking.c.projection == self.name))
        return self.catch_up()

    def _advance(self, connection: Connection, start: int, end: int) -> bool:
        return advance_tracking(connection, self.name, start, end)


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
