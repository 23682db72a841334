"""Fleet queries over ``message_status``: messages by status, provider, channel, reason and time,
newest first, a page at a time; failed messages for the failure groups (``domain.failures``).

Failed rows are read through the partial index of failed messages; other lists order by
``received_at`` (newest first) and page on (``received_at``, ``id``), so a page never repeats or
skips a row however many arrive meanwhile.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from uuid import UUID

from sqlalchemy import Engine, and_, inspect, or_, select

from adapters.sql import translated_schema
from adapters.status_view import message_status
from domain.message import FAILED

#: What ``--status`` may name (``in_flight``: an attempt under way).
STATUSES = ("received", "in_flight", "backed_off", "held", "delivered", "failed", "archived")
MAX_LIMIT = 1000


@dataclass(frozen=True)
class MessageQuery:
    """A fleet query's filters (None: any)."""

    status: str | None = None
    provider: str | None = None
    channel: str | None = None
    reason: str | None = None  # a substring of the last error
    since: datetime | None = None  # received at or after
    until: datetime | None = None  # received before
    failed_since: datetime | None = None  # failed at or after (whatever became of it since)


@dataclass(frozen=True)
class MessageRow:
    """One message as the lists show it (its address comes from its aggregate, masked)."""

    id: UUID
    message_id: str
    status: str
    channel: str
    provider: str | None
    attempts: int
    last_error: str | None
    permanent: bool
    received_at: datetime
    updated_at: datetime
    failed_at: datetime | None


def list_messages(
    engine: Engine, query: MessageQuery, *, limit: int = 50, cursor: str | None = None
) -> tuple[list[MessageRow], str | None]:
    """A page of messages, newest first, and the cursor of the next page (None: the last)."""
    table = message_status
    if not _has_table(engine):
        return [], None
    conditions: list[Any] = []
    if query.status:
        conditions.append(table.c.status == query.status)
    if query.provider:
        conditions.append(table.c.last_provider == query.provider)
    if query.channel:
        conditions.append(table.c.channel == query.channel)
    if query.reason:
        conditions.append(table.c.last_error.contains(query.reason, autoescape=True))
    if query.since:
        conditions.append(table.c.received_at >= query.since)
    if query.until:
        conditions.append(table.c.received_at < query.until)
    if query.failed_since:
        conditions.append(table.c.failed_at >= query.failed_since)
    if cursor:
        at, last = decode_cursor(cursor)
        conditions.append(or_(table.c.received_at < at, and_(table.c.received_at == at, table.c.id < last)))
    statement = (
        select(table)
        .where(*conditions)
        .order_by(table.c.received_at.desc(), table.c.id.desc())
        .limit(min(limit, MAX_LIMIT) + 1)
    )
    with engine.connect() as connection:
        rows = [_row(r) for r in connection.execute(statement)]
    page, more = rows[:limit], len(rows) > limit
    return page, encode_cursor(page[-1].received_at, page[-1].id) if more and page else None


def failed_rows(engine: Engine) -> list[tuple[str, str | None, bool, str | None, datetime | None]]:
    """Every Failed (not archived) message: (message_id, provider, permanent, reason, failed_at)."""
    table = message_status
    if not _has_table(engine):
        return []
    columns = (
        table.c.message_id,
        table.c.last_provider,
        table.c.permanent,
        table.c.last_error,
        table.c.failed_at,
    )
    statement = select(*columns).where(table.c.status == FAILED)
    with engine.connect() as connection:
        return [(r[0], r[1], bool(r[2]), r[3], _utc(r[4])) for r in connection.execute(statement)]


def encode_cursor(at: datetime, last: UUID) -> str:
    return base64.urlsafe_b64encode(f"{_utc(at).isoformat()}|{last}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, UUID]:
    """ValueError for a cursor this module did not make."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        at, last = text.split("|")
        return datetime.fromisoformat(at), UUID(last)
    except Exception:
        raise ValueError("not a cursor of this list") from None


def _row(row: Any) -> MessageRow:
    moments = [row.received_at, row.attempted_at, row.delivered_at, row.failed_at]
    updated = max(_utc(m) for m in moments if m is not None)
    return MessageRow(
        id=row.id,
        message_id=row.message_id,
        status=row.status,
        channel=row.channel,
        provider=row.last_provider,
        attempts=row.attempts,
        last_error=row.last_error,
        permanent=bool(row.permanent),
        received_at=_utc(row.received_at),
        updated_at=updated,
        failed_at=_utc(row.failed_at) if row.failed_at is not None else None,
    )


def _has_table(engine: Engine) -> bool:
    with engine.connect() as connection:
        return inspect(connection).has_table(
            message_status.name, schema=translated_schema(connection, message_status)
        )


def _utc(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc) if value.tzinfo else value.replace(tzinfo=timezone.utc)
    return value
