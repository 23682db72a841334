"""Parked events: what a follower went past because one event's own data cannot be handled.

A read model or a publisher whose batch fails on one event (a NUL that PostgreSQL text refuses,
a value too long for its column or for an AMQP short string) would retry it forever and stall
every event behind it. Such a *poison* event is parked instead: a row here, written in the same
transaction as the position that moves past it, and an error line. ``is_poison`` tells a data
error from an outage, which is raised and retried as before.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from uuid import UUID

import orjson
import pika.exceptions
import psycopg
import structlog
from eventsourcing.domain import DomainEvent
from eventsourcing.utils import get_topic
from sqlalchemy import Column, Connection, DateTime, Index, Integer, String, Table, Uuid, func, insert, select
from sqlalchemy.exc import DataError, InterfaceError, OperationalError, StatementError

from adapters.event_store import MessageStore, StoreUnavailableError
from adapters.rabbitmq import BrokerUnavailableError
from adapters.sql import as_utc, metadata
from domain.message import Message

log = structlog.get_logger(__name__)

#: Events a follower skipped because it could not handle them (see ``is_poison``): one row per
#: follower and event, written in the transaction that moves the follower past the event.
parked_events = Table(
    "parked_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("follower", String(64), nullable=False),
    Column("position", Integer, nullable=False),
    Column("originator_id", Uuid, nullable=False),
    Column("originator_version", Integer, nullable=False),
    Column("topic", String(255), nullable=False),
    Column("message_id", String(128)),
    Column("error", String(300), nullable=False),
    Column("parked_at", DateTime(timezone=True), nullable=False),
    Index("ix_parked_events_follower", "follower", "position"),
)

#: What a rebuild's runners park under, until the swap makes their rows the live ones.
SHADOW_PARKS = "__rebuild"


@dataclass(frozen=True)
class Parked:
    """One event a follower goes past without handling it, and why."""

    follower: str
    position: int
    event: DomainEvent
    error: str
    message_id: str | None


@dataclass(frozen=True)
class ParkedEvent:
    """A row of ``parked_events``, for status and listings."""

    follower: str
    position: int
    originator_id: UUID
    originator_version: int
    topic: str
    message_id: str | None
    error: str
    parked_at: datetime

    def as_json(self) -> dict[str, Any]:
        return {
            "follower": self.follower,
            "position": self.position,
            "aggregate_id": str(self.originator_id),
            "version": self.originator_version,
            "topic": self.topic,
            "message_id": self.message_id,
            "error": self.error,
            "parked_at": as_utc(self.parked_at).isoformat().replace("+00:00", "Z"),
        }


def park(
    follower: str, position: int, event: DomainEvent, exc: BaseException, message_id: str | None
) -> Parked:
    """What to record of ``event``, which ``follower`` cannot handle because of ``exc``."""
    return Parked(follower, position, event, describe_poison(exc), message_id)


def record_parked(connection: Connection, parked: Sequence[Parked]) -> None:
    """Insert the parked rows (inside the transaction that moves their follower past them)."""
    if not parked:
        return
    now = datetime.now(timezone.utc)
    connection.execute(
        insert(parked_events),
        [
            {
                "follower": item.follower,
                "position": item.position,
                "originator_id": item.event.originator_id,
                "originator_version": item.event.originator_version,
                "topic": get_topic(type(item.event))[:255],
                "message_id": printable(item.message_id, 128),
                "error": printable(item.error, 300),
                "parked_at": now,
            }
            for item in parked
        ],
    )


def log_parked(parked: Sequence[Parked]) -> None:
    """One error line per parked event, once its row is committed (no recipient, no body)."""
    for item in parked:
        log.error(
            "event_parked",
            follower=item.follower,
            position=item.position,
            message_id=printable(item.message_id, 128),
            aggregate_id=str(item.event.originator_id),
            version=item.event.originator_version,
            event_type=type(item.event).__name__,
            error=item.error,
        )


def parked_counts(connection: Connection) -> dict[str, int]:
    """How many events each follower has parked."""
    query = select(parked_events.c.follower, func.count()).group_by(parked_events.c.follower)
    return {str(follower): int(count) for follower, count in connection.execute(query)}


def latest_parked(connection: Connection, follower: str | None = None, limit: int = 100) -> list[ParkedEvent]:
    """Parked events, newest first (of one follower, or of all)."""
    query = select(parked_events).order_by(parked_events.c.id.desc()).limit(limit)
    if follower is not None:
        query = query.where(parked_events.c.follower == follower)
    return [
        ParkedEvent(
            follower=row.follower,
            position=row.position,
            originator_id=row.originator_id,
            originator_version=row.originator_version,
            topic=row.topic,
            message_id=row.message_id,
            error=row.error,
            parked_at=row.parked_at,
        )
        for row in connection.execute(query)
    ]


def client_message_id(store: MessageStore, event: DomainEvent) -> str | None:
    """The client's id of the event's message, for logs and parked rows; None if unreadable."""
    if isinstance(event, Message.Received):
        return str(event.message_id)
    try:
        return str(store.history_head(event.originator_id).message_id)
    except Exception:  # best effort: a parked row is worth more than its message id
        return None


# --- poison or outage -------------------------------------------------------------------------

#: A service is down, or refused us for now: retried, never parked.
_OUTAGE: tuple[type[BaseException], ...] = (
    OperationalError,
    InterfaceError,
    psycopg.OperationalError,
    psycopg.InterfaceError,
    pika.exceptions.AMQPConnectionError,
    pika.exceptions.AMQPChannelError,
    StoreUnavailableError,
    OSError,
)
#: The data of one event cannot be handled (a NUL in PostgreSQL text, a value too long for its
#: column or for an AMQP short string, a number out of range, a value that will not encode).
_POISON: tuple[type[BaseException], ...] = (
    DataError,
    psycopg.DataError,
    ValueError,
    OverflowError,
    orjson.JSONEncodeError,
    pika.exceptions.ShortStringTooLong,
)
#: SQLSTATEs of constraint violations that depend on one row's values (not null, check).
_ROW_VIOLATIONS = frozenset({"23502", "23514"})


def poison_cause(exc: BaseException) -> BaseException | None:
    """The link of ``exc``'s chain that makes it a poison (see ``is_poison``), or None."""
    for link in _links(exc):
        if isinstance(link, _OUTAGE):
            return None
        if isinstance(link, _POISON) or _is_row_violation(link):
            return link
    return None


def is_poison(exc: BaseException) -> bool:
    """Whether ``exc`` says that an event's own data cannot be handled, rather than that a
    service is down, another runner got there first, or smeg has a bug.

    Data errors only (``_POISON``; not-null and check violations), looked for along explicit
    causes, a SQLAlchemy error's driver error, and the context of ``BrokerUnavailableError``
    (which hides pika's error); the first link that is a connection error makes it an outage.
    Anything else is not poison: it is raised and retried as before.
    """
    return poison_cause(exc) is not None


def describe_poison(exc: BaseException) -> str:
    """One line for a parked row and its log line: the data error's type and first line."""
    cause = poison_cause(exc) or exc
    if isinstance(cause, StatementError) and cause.orig is not None:
        cause = cause.orig
    if isinstance(cause, pika.exceptions.ShortStringTooLong):
        size = len(cause.args[0]) if cause.args else "?"
        return f"ShortStringTooLong: a value of {size} bytes, where AMQP allows 255"
    lines = str(cause).strip().splitlines()
    name = type(cause).__name__
    return printable(f"{name}: {lines[0]}" if lines else name, 300) or name


def _links(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        yield link
        if isinstance(link, StatementError) and isinstance(link.orig, BaseException):
            link = link.orig
        elif link.__cause__ is not None:
            link = link.__cause__
        elif isinstance(link, BrokerUnavailableError):
            link = link.__context__  # raised ``from None`` while handling pika's error
        else:
            link = None


def _is_row_violation(exc: BaseException) -> bool:
    if isinstance(exc, psycopg.IntegrityError):
        return getattr(exc, "sqlstate", None) in _ROW_VIOLATIONS
    if isinstance(exc, sqlite3.IntegrityError):
        return str(exc).startswith(("NOT NULL constraint failed", "CHECK constraint failed"))
    return False


_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f]")


def printable(value: str | None, limit: int) -> str | None:
    """``value`` fit for a text column and a log line: control characters (NUL included) as
    ``?``, anything that is not UTF-8 escaped, at most ``limit`` characters."""
    if value is None:
        return None
    clean = value.encode("utf-8", "backslashreplace").decode("utf-8")
    return _UNPRINTABLE.sub("?", clean)[:limit]
