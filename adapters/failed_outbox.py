"""The dead-letter outbox: every ``Failed`` event of the log, published to ``{prefix}.failed``.

A failure is durable as its ``Failed`` event before anything is published, and publication
follows the log from a tracked position (the ``failed_queue`` row of ``smeg_tracking``). A process
that dies — or exits because the broker is gone — before publishing leaves the failure to the
next process instead of losing it. On PostgreSQL the position row is locked while a batch is
published (``FOR UPDATE SKIP LOCKED``), on SQLite a file beside the database, so two nodes (or
processes) do not publish the same batch; a crash
between publishing and moving the position publishes that batch again (at least once). The AMQP
``message_id`` is the client's, and a message retried and failed again is published again with a
higher ``x-smeg-attempts``: deduplicate on both. A store without the row starts at the log's head,
so failures recorded before this outbox existed are not published a second time — nor are any
left unpublished if the row is lost with the read-model database (a warning says so).

A failure that cannot be published because of its own data (the publisher raises a data error
for it, e.g. a property pika cannot encode) is parked (``parked_events``, recorded with the
position that moves past it) instead of holding up every failure behind it; a broker or store
that is down still stops the batch, which is tried again.
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path

import structlog
from eventsourcing.utils import get_topic
from sqlalchemy import Connection, Engine, insert, select, update
from sqlalchemy.exc import IntegrityError

from adapters.event_store import MessageStore
from adapters.parked_events import Parked, is_poison, log_parked, park, record_parked
from adapters.projections import advance_tracking, create_tables, tracking
from domain.dead_letter import failed_request, failure_headers
from domain.message import Message
from domain.ports import FailurePublisher

log = structlog.get_logger(__name__)

TRACKING_NAME = "failed_queue"
FAILED_TOPIC = get_topic(Message.Failed)


class FailedOutbox:
    """Publishes the log's ``Failed`` events after the tracked position, batch by batch.

    Args:
        store: the event store whose log is followed.
        engine: where the tracking row lives (the read models' database).
        publisher: the dead-letter queue (publishes with confirms, or raises).
        batch: log rows scanned per call.
    """

    def __init__(
        self, store: MessageStore, engine: Engine, publisher: FailurePublisher, *, batch: int = 5000
    ) -> None:
        self.store, self.engine, self.publisher, self.batch = store, engine, publisher, batch
        #: Failures this outbox parked (this process).
        self.parked = 0
        create_tables(engine)
        self._start_at_head()

    def keep_alive(self) -> None:
        """Service the publisher's broker connection, if it keeps one."""
        keep_alive = getattr(self.publisher, "keep_alive", None)
        if keep_alive is not None:
            keep_alive()

    def close(self) -> None:
        close = getattr(self.publisher, "close", None)
        if close is not None:
            close()

    def publish_pending(self) -> int:
        """Publish the failures of one batch of the log; return how many it settled (published,
        or parked).

        Raises what the publisher raises; the position then stays, and the batch is tried again.
        On PostgreSQL the position row stays locked while the batch is published. SQLite has a
        write lock per file, and a read transaction that later writes fails at once
        if another connection wrote meanwhile (the projector child writes this file all the time),
        so there the batch is published outside any transaction, under a lock file, and the
        position then moves only from the value it was read at.
        """
        if self.engine.dialect.name != "postgresql":
            with self._file_lock() as held:
                position = self.position() if held else None
                if position is None:
                    return 0
                published, end, parked = self._publish_after(position)
                if published is not None:
                    with self.engine.begin() as connection:
                        if advance_tracking(connection, TRACKING_NAME, position, end):
                            record_parked(connection, parked)
                        else:  # another process moved it: its rows, not ours
                            parked = []
                    self._parked(parked)
                return published or 0
        with self.engine.begin() as connection:
            position = self._lock(connection)
            if position is None:
                return 0
            published, end, parked = self._publish_after(position)
            if published is not None:
                connection.execute(
                    update(tracking).where(tracking.c.projection == TRACKING_NAME).values(position=end)
                )
                record_parked(connection, parked)
        self._parked(parked)
        return published or 0

    def _publish_after(self, position: int) -> tuple[int | None, int, list[Parked]]:
        """Publish the failures of the batch after ``position``: (how many were settled, or None
        when the log holds nothing new; the position of the last row read; those parked)."""
        entries, end = self.store.read_events(position, self.batch, topic=FAILED_TOPIC)
        if end == position:
            return None, position, []
        parked: list[Parked] = []
        for at, event in entries:
            message_id = None
            try:
                message = self.store.get_at_version(event.originator_id, event.originator_version)
                message_id = message.message_id
                self.publisher.publish_failed(failed_request(message), dict(failure_headers(message)))
            except Exception as exc:
                if not is_poison(exc):
                    raise
                parked.append(park(TRACKING_NAME, at, event, exc, message_id))
        return len(entries), end, parked

    def _parked(self, parked: list[Parked]) -> None:
        self.parked += len(parked)
        log_parked(parked)

    @contextlib.contextmanager
    def _file_lock(self) -> Iterator[bool]:
        """SQLite's stand-in for the row lock: an advisory lock on a file beside the database, so
        that the processes of ``smeg run --processes N`` on one file do not publish the same
        batch. Yields whether this process holds it (another one is publishing if not)."""
        database = self.engine.url.database
        if not database or database == ":memory:":
            yield True
            return
        with Path(f"{database}.failed-outbox.lock").open("a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def position(self) -> int | None:
        with self.engine.connect() as connection:
            query = select(tracking.c.position).where(tracking.c.projection == TRACKING_NAME)
            value = connection.scalar(query)
        return None if value is None else int(value)

    def _start_at_head(self) -> None:
        """Create the position at the log's head if there is none (before any failure is recorded)."""
        if self.position() is not None:
            return
        try:
            with self.engine.begin() as connection:
                head = self.store.max_position()
                connection.execute(insert(tracking).values(projection=TRACKING_NAME, position=head))
        except IntegrityError:  # another node made it first
            return
        if head:
            log.warning(
                "failed_queue_outbox_started_at_head",
                position=head,
                note="Failed events before this position are not published by the outbox",
            )

    def _lock(self, connection: Connection) -> int | None:
        """The position, locked for this transaction; None while another node holds it."""
        query = select(tracking.c.position).where(tracking.c.projection == TRACKING_NAME)
        locked = connection.scalar(query.with_for_update(skip_locked=True))
        return None if locked is None else int(locked)
