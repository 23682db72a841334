"""The event store: Message aggregates persisted with eventsourcing on SQLite or PostgreSQL.

The write path takes *changes* (how to load an aggregate, what to do to it), never bare objects:
eventsourcing's ``save()`` drains pending events before writing, so a failed save retried on the
same objects writes nothing (library-notes G1). Every retry here rebuilds from the store.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, cast
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError, Application, ProcessingEvent
from eventsourcing.domain import DomainEvent
from eventsourcing.persistence import (
    IntegrityError,
    JSONTranscoder,
    Notification,
    PersistenceError,
    Recording,
    Transcoder,
    Transcoding,
)

from adapters.event_log import FastJSONTranscoder, LogEntry, LogReader, Partition
from adapters.event_writer import EventWriter, Row
from adapters.group_commit import CommitTimeoutError, GroupCommitter
from adapters.store_connection import (
    CORE,
    SQLALCHEMY,
    TIMEOUT_KEY,
    diagnosed,
    is_database_error,
    one_line,
    store_env,
)
from domain.errors import DomainError
from domain.message import Message
from domain.ports import (
    Change,
    ConflictError,
    MessageNotFoundError,
    Outcome,
    StoreError,
    StoreUnavailableError,
)

__all__ = [  # the port's errors and change types, and the connection's names, re-exported
    "CORE",
    "SQLALCHEMY",
    "Change",
    "ConflictError",
    "MessageNotFoundError",
    "MessageStore",
    "Outcome",
    "StoreError",
    "StoreUnavailableError",
    "store_env",
]


class Messages(Application[UUID]):
    """The eventsourcing application holding every Message aggregate (and providers' health)."""

    name = "messages"

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        super().__init__(env=env)
        self.writer = EventWriter.for_application(self)

    def save(self, *objs: Any, **kwargs: Any) -> list[Recording[UUID]]:
        """``Application.save`` for our own aggregates, without its per-object checks.

        The library tests each object against two runtime-checkable Protocols, which cost about
        a fifth of the write path's CPU here; every object we save is one of ours. Where an
        ``EventWriter`` can, it writes the rows (``adapters.event_writer``); nothing here reads
        the recordings the library would return, so none are made.
        """
        if self.writer is not None and not kwargs:
            self.writer.write(self.writer.rows(e for message in objs for e in message.collect_events()))
            return []
        processing_event: ProcessingEvent[UUID] = ProcessingEvent()
        for message in objs:
            processing_event.events.extend(message.collect_events())
            processing_event.aggregates[message.id] = message
        processing_event.saved_kwargs.update(kwargs)
        recordings = self._record(processing_event)
        self._take_snapshots(processing_event)
        self._notify(recordings)
        return recordings

    def construct_transcoder(self) -> Transcoder:
        """The library's JSON format, decoded with orjson (``adapters.event_log``)."""
        transcoder = FastJSONTranscoder()
        self.register_transcodings(transcoder)
        return transcoder

    def register_transcodings(self, transcoder: JSONTranscoder) -> None:
        super().register_transcodings(transcoder)
        for transcoding in EXTRA_TRANSCODINGS:
            transcoder.register(transcoding)


#: Extra transcodings (tests register freezegun's FakeDatetime here).
EXTRA_TRANSCODINGS: list[Transcoding] = []


@dataclass
class Decided:
    """A change as its caller decided it, on the caller's thread: the outcome of its first try
    and the rows to write for it. ``outcome`` is None where the library writes (no
    ``EventWriter``): the committer then applies the change itself."""

    change: Change
    outcome: Outcome | None = None
    rows: list[Row] = field(default_factory=list)


class MessageStore:
    """Loads and saves Message aggregates; reads the ordered event log.

    Args:
        url: SQLAlchemy URL (``sqlite:///smeg.db`` or ``postgresql+psycopg://…``).
        recorder: ``core`` (eventsourcing's own recorders, the default) or ``sqlalchemy``.
        schema: PostgreSQL schema for the tables (default ``public``).
    """

    def __init__(self, url: str, *, recorder: str = CORE, schema: str = "", timeout: float = 15.0) -> None:
        self.url, self.schema, self.timeout = url, schema, timeout
        self.committer: GroupCommitter[Decided, Outcome] = GroupCommitter(self._commit)
        env = store_env(url, recorder=recorder, schema=schema)
        env[TIMEOUT_KEY] = str(timeout)
        self.app = _open_application(env)
        self.log = LogReader(self.app)

    def close(self) -> None:
        self.committer.close()
        self.app.close()

    def ping(self) -> None:
        """One round trip to the database; raise StoreUnavailableError if it fails."""
        try:
            self.app.recorder.max_notification_id()
        except Exception as exc:
            raise StoreUnavailableError(one_line(exc)) from None

    def get(self, aggregate_id: UUID) -> Message:
        """The aggregate as of its latest event."""
        try:
            message: Message = self.app.repository.get(aggregate_id)
        except AggregateNotFoundError:
            raise MessageNotFoundError(f"no message {aggregate_id}") from None
        except PersistenceError as exc:
            raise StoreUnavailableError(one_line(exc)) from None
        return message

    def get_at_version(self, aggregate_id: UUID, version: int) -> Message:
        """The aggregate as it was after its ``version``-th event (for audits)."""
        try:
            message: Message = self.app.repository.get(aggregate_id, version=version)
        except AggregateNotFoundError:
            raise MessageNotFoundError(f"no message {aggregate_id}") from None
        except PersistenceError as exc:
            raise StoreUnavailableError(one_line(exc)) from None
        return message

    def get_by_message_id(self, message_id: str) -> Message:
        """The aggregate of a client ``message_id``."""
        try:
            return self.get(Message.create_id(message_id))
        except MessageNotFoundError:
            raise MessageNotFoundError(f"no message with id {message_id!r}") from None

    def history(self, aggregate_id: UUID) -> list[DomainEvent]:
        """Every event of one message, oldest first."""
        try:
            records = self.app.recorder.select_events(aggregate_id)
        except PersistenceError as exc:
            raise StoreUnavailableError(one_line(exc)) from None
        return [cast(DomainEvent, self.app.mapper.to_domain_event(r)) for r in records]

    def history_head(self, aggregate_id: UUID) -> Message.Received:
        """The Received event of one message (cheap: one row)."""
        try:
            records = self.app.recorder.select_events(aggregate_id, lte=1)
        except PersistenceError as exc:
            raise StoreUnavailableError(one_line(exc)) from None
        if not records:
            raise MessageNotFoundError(f"no message {aggregate_id}")
        event = self.app.mapper.to_domain_event(records[0])
        assert isinstance(event, Message.Received)
        return event

    def commit(self, changes: Sequence[Change]) -> list[Outcome]:
        """Apply and save every change in one transaction; fall back to one by one on conflict.

        Returns one outcome per change, in order. Raises StoreUnavailableError when the
        database fails or does not answer within the store's timeout (a hung server or a
        network that swallows packets); the changes stay replayable, so the caller may simply
        call again: a retry reloads every aggregate from the store.
        """
        try:
            outcomes = self.committer.submit(self._decide(changes), self.timeout)
        except CommitTimeoutError as exc:
            raise StoreUnavailableError(str(exc)) from None
        for outcome in outcomes:
            if outcome.error is not None:
                raise outcome.error
        return outcomes

    def _decide(self, changes: Sequence[Change]) -> list[Decided]:
        """Apply each change and encode its events here, on the caller's thread.

        The committer is the one serial stage of the write path: what it no longer does (domain
        decisions, loads, encoding) runs on the callers' threads, overlapping its waits on the
        database. Each cached object is used here once: a retry of ``changes`` reloads (G1).
        """
        writer = self.app.writer
        if writer is None:
            return [Decided(change) for change in changes]
        decided: list[Decided] = []
        try:
            for change in changes:
                outcome = self._apply(change, use_cache=True)
                rows = writer.rows(outcome.message.collect_events()) if outcome.message is not None else []
                decided.append(Decided(change, outcome, rows))
        finally:
            for change in changes:
                change.cached = None
        return decided

    def _commit(self, decided: Sequence[Decided]) -> list[Outcome]:
        changes = [item.change for item in decided]
        try:
            if decided and all(item.outcome is not None for item in decided):
                return self._write_decided(decided)
            return self._attempt(changes, use_cache=True)
        finally:
            for change in changes:
                change.cached = None

    def _write_decided(self, decided: Sequence[Decided]) -> list[Outcome]:
        """Write the rows the callers encoded, in one transaction; on a conflict, bisect."""
        assert self.app.writer is not None
        try:
            self.app.writer.write([row for item in decided for row in item.rows])
        except IntegrityError:
            return self._after_conflict([item.change for item in decided], reloaded=False)
        except PersistenceError as exc:
            raise StoreUnavailableError(one_line(exc)) from None
        return [cast(Outcome, item.outcome) for item in decided]

    def update(self, aggregate_id: UUID, apply: Callable[[Message], None]) -> Outcome:
        """Load, apply and save one aggregate, reloading once if another writer got there first."""
        change = Change(load=lambda: self.get(aggregate_id), apply=apply)
        outcome = self.commit([change])[0]
        if outcome.conflict:
            outcome = self.commit([change])[0]
        if outcome.missing:
            raise MessageNotFoundError(f"no message {aggregate_id}")
        return outcome

    def _apply(self, change: Change, *, use_cache: bool) -> Outcome:
        try:
            message = change.cached if use_cache and change.cached else change.load()
            change.apply(message)
        except MessageNotFoundError:
            return Outcome(missing=True)
        except DomainError as exc:
            return Outcome(refused=exc)
        except StoreError:
            raise
        except Exception as exc:
            return Outcome(error=exc)
        return Outcome(message=message)

    def _attempt(self, changes: Sequence[Change], *, use_cache: bool) -> list[Outcome]:
        """One transaction for ``changes``, applied here; after a conflict, bisect."""
        try:
            outcomes = [self._apply(change, use_cache=use_cache) for change in changes]
            aggregates = [outcome.message for outcome in outcomes if outcome.message is not None]
            if aggregates:
                self.app.save(*aggregates)
            return outcomes
        except IntegrityError:
            return self._after_conflict(changes, reloaded=not use_cache)
        except PersistenceError as exc:
            raise StoreUnavailableError(one_line(exc)) from None

    def _after_conflict(self, changes: Sequence[Change], *, reloaded: bool) -> list[Outcome]:
        """Some change of a failed transaction lost a race: find which, in few transactions.

        Each half is committed on its own, split again where a conflict remains, so k conflicts in
        n changes cost O(k log n) transactions, not n. Every retry reloads its aggregates (never
        the drained objects of the failed save, G1); a single change is reloaded once, so a stale
        cached object is re-decided on the latest version before it counts as a conflict.
        """
        if len(changes) > 1:
            middle = len(changes) // 2
            first, second = changes[:middle], changes[middle:]
            return self._attempt(first, use_cache=False) + self._attempt(second, use_cache=False)
        if not reloaded:
            return self._attempt(changes, use_cache=False)
        return [Outcome(conflict=True)]

    def max_position(self) -> int:
        """Position of the newest event in the log (0 when empty)."""
        try:
            return self.app.recorder.max_notification_id() or 0
        except PersistenceError as exc:
            raise StoreUnavailableError(one_line(exc)) from None

    def read_log(self, after: int, limit: int) -> list[Notification]:
        """Up to ``limit`` log entries after position ``after``, in store order."""
        try:
            return list(
                self.app.recorder.select_notifications(start=after, limit=limit, inclusive_of_start=False)
            )
        except PersistenceError as exc:
            raise StoreUnavailableError(one_line(exc)) from None

    def decode(self, notification: Notification) -> DomainEvent:
        return cast(DomainEvent, self.app.mapper.to_domain_event(notification))

    def read_events(
        self,
        after: int,
        limit: int,
        *,
        until: int | None = None,
        partition: Partition | None = None,
        topic: str | None = None,
    ) -> tuple[list[LogEntry], int]:
        """Up to ``limit`` log rows after ``after`` (at most ``until``), decoded, in store order.

        Returns the ``(position, event)`` entries — only those of originators ``partition``
        accepts and of event ``topic``, when given — and the position of the last row read
        (``after`` when none). Without ``topic``, only messages' events: other aggregates of the
        same log (providers' health) are left to readers that name their topics.
        """
        with _reading():
            entries, end = self.log.read(after, limit, until=until, partition=partition, topic=topic)
        if topic is None:
            entries = [entry for entry in entries if isinstance(entry[1], Message.Event)]
        return entries, end

    def histories(self, ids: Collection[UUID]) -> dict[UUID, list[DomainEvent]]:
        """Every event of each message in ``ids``, in version order (absent ids are left out)."""
        with _reading():
            return self.log.histories(ids)

    def iter_log(self, *, after: int = 0, page: int = 1000) -> Iterator[LogEntry]:
        """Every event after ``after`` in store order, page by page (constant memory)."""
        while True:
            entries, last = self.read_events(after, page)
            if last == after:
                return
            yield from entries
            after = last


@contextmanager
def _reading() -> Iterator[None]:
    """Raw reads of the log (``adapters.event_log``): any database error is StoreUnavailableError."""
    try:
        yield
    except PersistenceError as exc:
        raise StoreUnavailableError(one_line(exc)) from None
    except Exception as exc:
        if is_database_error(exc):
            raise StoreUnavailableError(one_line(exc)) from None
        raise


def _open_application(env: dict[str, str]) -> Messages:
    """Open the application; a concurrent first start (two processes creating the tables of a
    fresh schema at once) loses a race in PostgreSQL's catalog, so that is tried again."""
    for attempt in range(3):
        try:
            return Messages(env)
        except StoreError:
            raise
        except Exception as exc:
            racing = any(
                sign in str(exc) for sign in ("duplicate key", "already exists", "concurrently updated")
            )
            if not racing or attempt == 2:
                raise StoreUnavailableError(diagnosed(exc, env)) from None
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


def event_type(event: DomainEvent) -> str:
    """The event's domain name (``Received``, ``Attempted`` …)."""
    return type(event).__name__
