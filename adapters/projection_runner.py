"""The projection framework: ``Projection`` (a SQL read model that follows the event log) and
``ProjectionRunner``, which applies the log to it exactly once.

Each batch of events is applied and the projection's tracking position advanced in ONE
transaction; the position only moves forward from the value read at the start of the batch, so
a second runner (another node) that applied the same batch first makes ours roll back.

An event a follower cannot handle (a NUL that PostgreSQL text refuses, a value too long for its
column; for the publishers that share this machinery, a value too long for an AMQP short string)
would otherwise fail its batch forever and stall every event behind it. Such a *poison* event is
parked instead (``parked_events``, in the same transaction as the position that moves past it) —
only when it fails on its own with a data error: a failed batch is split and its halves applied,
down to single events (``ProjectionRunner.settle``), and an error that says a service is down is
raised as before, to be retried (``is_poison``).

Several runners stepped in one transaction: ``adapters.projection_group``; a rebuild beside the
live tables: ``adapters.shadow_rebuild``; the positions themselves: ``adapters.tracking``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Protocol
from uuid import UUID

import structlog
from eventsourcing.domain import DomainEvent
from sqlalchemy import Connection, Engine, Table
from sqlalchemy.exc import IntegrityError

from adapters.event_log import LogEntry
from adapters.event_store import MessageStore
from adapters.parked_events import (
    Parked,
    client_message_id,
    describe_poison,
    is_poison,
    log_parked,
    park,
    parked_events,
    record_parked,
)
from adapters.tracking import advance_tracking, create_tables, read_position, tracking

log = structlog.get_logger(__name__)

#: The writes a projection prepared, made inside the runner's transaction.
Write = Callable[[Connection], None]

#: Every stored event of each of these messages, in version order (``MessageStore.histories``).
History = Callable[[Collection[UUID]], Mapping[UUID, Sequence[DomainEvent]]]


class Projection(Protocol):
    """A read model: its name, its tables, and how a batch of events changes them."""

    name: str

    @property
    def tables(self) -> list[Table]:
        """Every table the projection writes (the rebuild shadows and swaps them)."""
        ...

    def retarget(self, tables: dict[str, Table]) -> Projection:
        """The same projection writing to ``tables`` (keyed by live table name)."""
        ...

    def prepare(self, connection: Connection, events: Sequence[DomainEvent], history: History) -> Write:
        """Read what the events (store order) need and fold them; return the write to make.

        Reads only: on SQLite the write lock is taken by the first write, so the runner calls
        every projection's ``prepare`` before any write and holds the lock for the writes alone.
        ``history`` reads messages' earlier events from the store, for facts a projection does
        not keep in a table of its own.
        """
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
        parks_as: appended to a projection's name for the events it parks (a rebuild's runners
            park under ``<name>__rebuild`` until the swap).
    """

    def __init__(
        self,
        store: MessageStore,
        engine: Engine,
        projections: Sequence[Projection],
        *,
        name: str = "read_models",
        batch: int = 1000,
        parks_as: str = "",
    ) -> None:
        self.store, self.engine, self.projections = store, engine, projections
        self.name, self.batch, self.parks_as = name, batch, parks_as
        #: The position ``step_together`` last committed, so its next step need not read it back;
        #: a move by anyone else makes that step's advance fail, and the position is read again.
        self.known_position: int | None = None
        #: Events this runner parked (this process), per projection and event.
        self.parked = 0
        create_tables(engine)

    def position(self) -> int:
        with self.engine.connect() as connection:
            return read_position(connection, self.name)

    def step(self) -> int:
        """Apply one batch; return how many events it held (0 when caught up or lost a race)."""
        start = self.position()
        entries, end = self.store.read_events(start, self.batch)
        if end == start:
            return 0
        return self.settle(start, entries, end)

    def apply_batch(self, start: int, end: int, events: Sequence[DomainEvent]) -> int:
        """Apply ``events`` (positions after ``start`` up to ``end``) and move the position, in one tx.

        Raises what the projections raise (nothing is parked here: see ``settle``).
        """
        return len(events) if self._apply(start, end, events) else 0

    def settle(self, start: int, entries: Sequence[LogEntry], end: int) -> int:
        """Apply ``entries`` (positions after ``start`` up to ``end``) as one batch; if it fails on
        bad data, apply its halves (splitting again where they fail) and park each event that
        fails on its own. Returns how many events were settled (applied or parked); 0 when
        another runner moved the position first. Outages and other errors are raised.

        Splitting costs about two transactions per halving around each poison event, and only
        after a batch failed; a batch that succeeds is still one transaction.
        """
        try:
            done = self._apply(start, end, [event for _at, event in entries])
        except Exception as exc:
            if not is_poison(exc):
                raise
            log.warning(
                "projection_batch_isolating",
                projection=self.name,
                position=start,
                events=len(entries),
                error=describe_poison(exc),
            )
            done = self._split(start, entries, end, exc)
        return len(entries) if done else 0

    def catch_up(self) -> int:
        """Apply batches until the log's head; return how many events were applied."""
        total = 0
        while applied := self.step():
            total += applied
        return total

    def rebuild(self) -> int:
        """Clear every read model, its parked events and the position, then replay the whole log."""
        with self.engine.begin() as connection:
            for projection in self.projections:
                projection.clear(connection)
            connection.execute(parked_events.delete().where(parked_events.c.follower.in_(self.park_names)))
            connection.execute(tracking.delete().where(tracking.c.projection == self.name))
        return self.catch_up()

    @property
    def park_names(self) -> list[str]:
        """The follower names this runner's parked rows carry (one per projection)."""
        return [f"{projection.name}{self.parks_as}" for projection in self.projections]

    def _apply(self, start: int, end: int, events: Sequence[DomainEvent]) -> bool:
        """One transaction: the projections' writes and the position; False on a lost race."""
        try:
            with self.engine.begin() as connection:
                history = SharedHistory(self.store.histories)
                writes = [projection.prepare(connection, events, history) for projection in self.projections]
                if not self._advance(connection, start, end):
                    return False
                for write in writes:
                    write(connection)
        except IntegrityError as exc:
            if is_poison(exc):
                raise
            log.info("projection_race_lost", projection=self.name, position=start)
            return False
        return True

    def _split(self, start: int, entries: Sequence[LogEntry], end: int, failure: Exception) -> bool:
        """``entries`` failed together on bad data: settle each half, down to single events."""
        if len(entries) <= 1:
            return self._settle_alone(start, entries, end, failure)
        middle = len(entries) // 2
        at = entries[middle - 1][0]
        return self._segment(start, entries[:middle], at) and self._segment(at, entries[middle:], end)

    def _segment(self, start: int, entries: Sequence[LogEntry], end: int) -> bool:
        try:
            return self._apply(start, end, [event for _at, event in entries])
        except Exception as exc:
            if not is_poison(exc):
                raise
            return self._split(start, entries, end, exc)

    def _settle_alone(self, start: int, entries: Sequence[LogEntry], end: int, failure: Exception) -> bool:
        """One event failed on its own: park it for the projections that cannot take it, apply it
        to the others (each in a savepoint), and move past it, in one transaction."""
        if not entries:
            raise failure
        [(at, event)] = entries
        message_id = client_message_id(self.store, event)
        parked: list[Parked] = []
        try:
            with self.engine.begin() as connection:
                # The position first: on SQLite this write opens the transaction, so that the
                # savepoints below are nested in it (pysqlite starts none for a SAVEPOINT).
                if not self._advance(connection, start, end):
                    return False
                if len(self.projections) == 1:
                    parked.append(park(self.park_names[0], at, event, failure, message_id))
                else:
                    history = SharedHistory(self.store.histories)
                    for projection, name in zip(self.projections, self.park_names, strict=True):
                        try:
                            with connection.begin_nested():
                                projection.prepare(connection, [event], history)(connection)
                        except Exception as exc:
                            if not is_poison(exc):
                                raise
                            parked.append(park(name, at, event, exc, message_id))
                record_parked(connection, parked)
        except IntegrityError as exc:
            if is_poison(exc):
                raise
            log.info("projection_race_lost", projection=self.name, position=start)
            return False
        self.parked += len(parked)
        log_parked(parked)
        return True

    def _advance(self, connection: Connection, start: int, end: int) -> bool:
        return advance_tracking(connection, self.name, start, end)


class SharedHistory:
    """One batch's reads of messages' histories, shared by its projections: each message is read
    from the store at most once per batch, however many projections miss it."""

    def __init__(self, read: History) -> None:
        self.read = read
        self.seen: dict[UUID, Sequence[DomainEvent]] = {}

    def __call__(self, ids: Collection[UUID]) -> Mapping[UUID, Sequence[DomainEvent]]:
        wanted = [key for key in ids if key not in self.seen]
        if wanted:
            found = self.read(wanted)
            for key in wanted:
                self.seen[key] = found.get(key, ())
        return {key: self.seen[key] for key in ids if self.seen[key]}
