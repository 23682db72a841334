"""What is due when, read from ``message_status``: messages per minute and provider, held ones.

The counts are grouped in SQL, so what is read is bounded by the window (one row per minute and
provider) however many messages are waiting. Only unfinished rows are looked at, through the
table's partial index.

- Received (never attempted, or retried): due now. Backed off or held: at ``retry_at``; one whose
  ``retry_at`` is past is overdue and due now. "Now" is the current minute.
- In flight: not due (its outcome is awaited; an attempt that turns stale is the orphan sweep's).
- The provider of a row is ``last_provider``: the one it last tried, or for a held message the one
  it waits for; None for a message not attempted yet (the provider it requested is not a column).
- The oldest held message is the one received first; ``since`` is its ``received_at``: when it
  became held is not recorded in the read model.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Engine,
    Integer,
    Select,
    and_,
    case,
    cast,
    extract,
    func,
    inspect,
    literal,
    or_,
    select,
)

from adapters.sql import translated_schema
from adapters.status_view import held_counts, message_status
from domain.message import BACKED_OFF, HELD, RECEIVED

_WAITING = (BACKED_OFF, HELD)


@dataclass(frozen=True)
class DueCount:
    """How many messages fall due in one minute (UTC) for one provider (None: not chosen yet)."""

    minute: datetime
    provider: str | None
    count: int


@dataclass(frozen=True)
class OldestHeld:
    """The held message received first; ``since`` is its ``received_at``."""

    message_id: str
    since: datetime


@dataclass(frozen=True)
class Schedule:
    """Due counts in minute and provider order, held messages per provider, the oldest held."""

    due: list[DueCount]
    held: dict[str, int]
    oldest_held: OldestHeld | None


def read_schedule(
    engine: Engine, *, now: datetime, within: timedelta, provider: str | None = None
) -> Schedule:
    """What falls due from ``now`` until ``now + within`` (overdue and received ones in the current
    minute), every held message per provider, and the oldest held; only ``provider``'s if given.

    Empty before the read model's first start (the table does not exist yet).
    """
    if not _has_table(engine):
        return Schedule(due=[], held={}, oldest_held=None)
    now = now.astimezone(timezone.utc)
    held = {name: count for name, count in held_counts(engine).items() if provider in (None, name)}
    with engine.connect() as connection:
        query = _due_query(connection.dialect.name, now, now + within, provider)
        due = [_due_count(row) for row in connection.execute(query)]
        oldest = connection.execute(_oldest_held_query(provider)).first()
    due.sort(key=lambda item: (item.minute, item.provider or ""))
    return Schedule(due=due, held=held, oldest_held=_oldest(oldest))


def _has_table(engine: Engine) -> bool:
    table = message_status
    with engine.connect() as connection:
        return inspect(connection).has_table(table.name, schema=translated_schema(connection, table))


def _due_query(dialect: str, now: datetime, horizon: datetime, provider: str | None) -> Select[Any]:
    """Counts per (epoch minute, provider): an inner select buckets each row, the outer groups
    (grouping by an expression with bound parameters in it is refused by PostgreSQL)."""
    table = message_status
    unscheduled = or_(table.c.retry_at.is_(None), table.c.retry_at < now)
    due_now = or_(table.c.status == RECEIVED, unscheduled)
    minute = case((due_now, literal(_epoch_minute(now))), else_=_minute_of(table.c.retry_at, dialect))
    soon = or_(table.c.retry_at.is_(None), table.c.retry_at < horizon)
    waiting = and_(table.c.status.in_(_WAITING), soon)
    rows = select(minute.label("minute"), table.c.last_provider.label("provider")).where(
        table.c.status.in_((RECEIVED, *_WAITING)), or_(table.c.status == RECEIVED, waiting)
    )
    if provider is not None:
        rows = rows.where(table.c.last_provider == provider)
    bucketed = rows.subquery()
    count = func.count().label("count")
    return select(bucketed.c.minute, bucketed.c.provider, count).group_by(
        bucketed.c.minute, bucketed.c.provider
    )


def _minute_of(column: ColumnElement[datetime], dialect: str) -> ColumnElement[int]:
    """Whole minutes since the epoch of a timestamp, in the database (no portable SQL does this).

    SQLite keeps UTC text (``2026-12-07 06:01:59.999999``): its seconds are cut before the
    fraction, which ``strftime`` would round to milliseconds (06:02:00). PostgreSQL's
    ``timestamptz`` is truncated to its UTC minute first, so the epoch is a whole number (whatever
    the session's time zone, and exact even where ``extract`` returns a double).
    """
    if dialect == "sqlite":
        return cast(func.strftime("%s", func.substr(column, 1, 19)), Integer) // 60
    utc_minute = func.date_trunc("minute", func.timezone("UTC", column))
    return cast(extract("epoch", utc_minute), BigInteger) // 60


def _epoch_minute(moment: datetime) -> int:
    """Whole minutes since the epoch (the minute ``moment`` falls in)."""
    return int(moment.timestamp()) // 60


def _due_count(row: Any) -> DueCount:
    minute = datetime.fromtimestamp(int(row.minute) * 60, timezone.utc)
    return DueCount(minute=minute, provider=row.provider, count=int(row.count))


def _oldest_held_query(provider: str | None) -> Select[Any]:
    table = message_status
    query = select(table.c.message_id, table.c.received_at).where(table.c.status == HELD)
    if provider is not None:
        query = query.where(table.c.last_provider == provider)
    return query.order_by(table.c.received_at, table.c.message_id).limit(1)


def _oldest(row: Any) -> OldestHeld | None:
    if row is None:
        return None
    since: datetime = row.received_at  # naive on SQLite (stored as UTC text), else in the session's zone
    since = since.astimezone(timezone.utc) if since.tzinfo else since.replace(tzinfo=timezone.utc)
    return OldestHeld(message_id=row.message_id, since=since)


def oldest_backoff_due(engine: Engine) -> datetime | None:
    """The earliest ``retry_at`` of a backed-off message (held ones wait for their provider, not
    the clock, and are left out); None when there is none."""
    table = message_status
    if not _has_table(engine):
        return None
    query = select(func.min(table.c.retry_at)).where(table.c.status == BACKED_OFF)
    with engine.connect() as connection:
        due = connection.execute(query).scalar()
    if due is None:
        return None
    moment: datetime = due
    return moment.astimezone(timezone.utc) if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
