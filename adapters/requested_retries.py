"""Retries people asked for (``RetryRequested``) that no process has attempted yet.

``message_status`` keeps them as received rows with ``retry_at`` set to when the retry was asked
for, in a partial index of their own (``status_view.requested_index``), so the each-second look
every delivery process takes costs one probe of an index that is empty almost always.
"""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from sqlalchemy import Engine, and_, or_, select

from adapters.sql import as_utc
from adapters.status_view import message_status, requested

#: Rows read per query; a bulk retry larger than this is read over several ticks.
REQUESTED_PAGE = 1_000


class RequestedRetryIndex:
    """The ``RequestedRetries`` port over ``message_status``."""

    def __init__(self, engine: Engine, page_size: int = REQUESTED_PAGE) -> None:
        self.engine, self.page_size = engine, page_size

    def __call__(self, after: tuple[datetime, UUID] | None) -> list[tuple[UUID, datetime]]:
        """Requested retries after the row ``after`` (``(when, id)``; all, with None), oldest
        first, as ``(id, when)``."""
        table = message_status
        query = select(table.c.id, table.c.retry_at).where(requested)
        if after is not None:
            when, last = after
            later = or_(table.c.retry_at > when, and_(table.c.retry_at == when, table.c.id > last))
            query = query.where(later)
        query = query.order_by(table.c.retry_at, table.c.id).limit(self.page_size)
        with self.engine.connect() as connection:
            rows = connection.execute(query).all()
        return [(row.id, as_utc(row.retry_at)) for row in rows]
