"""The ``message_status`` read model: one row per message, and the queries the runtime needs.

Columns are documented in docs/architecture.md; a BI tool may query the table directly.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from functools import partial
from typing import Any
from uuid import UUID

from eventsourcing.domain import DomainEvent
from sqlalchemy import (
    Boolean,
    Column,
    ColumnElement,
    Connection,
    DateTime,
    Engine,
    Index,
    Integer,
    String,
    Table,
    Update,
    Uuid,
    and_,
    bindparam,
    case,
    func,
    inspect,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from adapters.projections import History, Write
from adapters.sql import as_utc, copy_rows, execute_many, metadata, qualified_name, translated_schema
from domain.message import ARCHIVED, BACKED_OFF, DELIVERED, FAILED, HELD, IN_FLIGHT, RECEIVED, Message
from domain.ports import UNFINISHED_PAGE

message_status = Table(
    "message_status",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("message_id", String(128), nullable=False),
    Column("channel", String(8), nullable=False),
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("last_provider", String(64)),
    Column("last_error", String(256)),
    Column("permanent", Boolean, nullable=False),
    Column("correlation_id", String(128), nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("attempted_at", DateTime(timezone=True)),
    Column("delivered_at", DateTime(timezone=True)),
    Column("failed_at", DateTime(timezone=True)),
    Column("retry_at", DateTime(timezone=True)),
)

#: The one secondary index: unfinished messages, all the runtime's queries look for (start-up
#: adoption, the orphan sweep). Finished rows leave it, so the updates that finish a message
#: touch the primary key only (indexes on ``status``, ``retry_at`` and ``message_id``, before
#: 2026-11-27, made each of a message's three writes insert into four indexes).
UNFINISHED_INDEX = "ix_message_status_unfinished"
UNFINISHED = (RECEIVED, IN_FLIGHT, BACKED_OFF, HELD)
_unfinished = message_status.c.status.in_(UNFINISHED)
unfinished_index = Index(
    UNFINISHED_INDEX, message_status.c.status, postgresql_where=_unfinished, sqlite_where=_unfinished
)
#: Failed messages by when they failed: the ``failures`` alert counts those of its window (failures
#: are rare, so the index costs the writes that finish a message nothing but theirs).
FAILED_INDEX = "ix_message_status_failed"
_failed = message_status.c.status == FAILED
failed_index = Index(FAILED_INDEX, message_status.c.failed_at, postgresql_where=_failed, sqlite_where=_failed)
#: Messages a person asked to retry that no process has attempted yet, by when they asked
#: (``retry_at``): every process looks for new ones each second (``RequestedRetryIndex``).
REQUESTED_INDEX = "ix_message_status_requested"
requested = and_(message_status.c.status == RECEIVED, message_status.c.retry_at.is_not(None))
requested_index = Index(
    REQUESTED_INDEX, message_status.c.retry_at, postgresql_where=requested, sqlite_where=requested
)
_LEGACY_INDEXED = frozenset({"message_id", "status", "retry_at"})


def upgrade_indexes(connection: Connection) -> None:
    """Give an older ``message_status`` today's index: drop its single-column indexes (before
    2026-11-27; whatever a rebuild renamed them) and a partial one whose predicate misses a status
    of ``UNFINISHED`` (``held``, 2026-12-07); create the partial ones. Idempotent; run with every
    ``create_tables``."""
    schema = translated_schema(connection, message_status)
    indexes = inspect(connection).get_indexes(message_status.name, schema=schema)
    preparer = connection.dialect.identifier_preparer
    prefix = f"{preparer.quote_schema(schema)}." if schema else ""
    for index in indexes:
        name, columns = str(index["name"]), index["column_names"]
        ours = name.startswith((UNFINISHED_INDEX, REQUESTED_INDEX))
        legacy = not ours and len(columns) == 1 and columns[0] in _LEGACY_INDEXED
        if legacy or (name.startswith(UNFINISHED_INDEX) and not _covers_unfinished(index)):
            connection.execute(text(f"DROP INDEX IF EXISTS {prefix}{preparer.quote(name)}"))
    indexes = inspect(connection).get_indexes(message_status.name, schema=schema)
    if not any(str(index["name"]).startswith(UNFINISHED_INDEX) for index in indexes):
        unfinished_index.create(connection, checkfirst=True)
    for wanted in (failed_index, requested_index):
        if not any(str(found["name"]).startswith(str(wanted.name)) for found in indexes):
            wanted.create(connection, checkfirst=True)


def _covers_unfinished(index: Any) -> bool:
    """Whether a partial index's reflected predicate names every unfinished status."""
    options = index.get("dialect_options", {})
    where = options.get("postgresql_where", options.get("sqlite_where"))
    predicate = str(getattr(where, "text", where) or "")
    return all(f"'{status}'" in predicate for status in UNFINISHED)


metadata.info.setdefault("upgrades", []).append(upgrade_indexes)

_COLUMNS = [c.name for c in message_status.columns]


class MessageStatusProjection:
    """Keeps ``message_status`` (or a shadow copy of it, for a rebuild) in step with the log."""

    name = "message_status"

    def __init__(self, table: Table = message_status) -> None:
        self.table = table

    @property
    def tables(self) -> list[Table]:
        return [self.table]

    def retarget(self, tables: dict[str, Table]) -> MessageStatusProjection:
        """The same projection writing to other tables (keyed by live name), for a rebuild."""
        return MessageStatusProjection(tables[self.table.name])

    def prepare(self, connection: Connection, events: Sequence[DomainEvent], history: History) -> Write:
        """Fold the batch without reading the table: a whole row for each message received in
        the batch (upserted), and for each earlier message only the columns its events set
        (updated). Every column an event sets is a value of that event, never one derived from
        the row, so the row as it stands is not needed. Reading it back to rewrite it whole was
        about a third of the projector's time while ``smeg run`` delivered at full speed.
        """
        rows: dict[UUID, dict[str, Any]] = {}
        patches: dict[UUID, dict[str, Any]] = {}
        for event in events:
            key = event.originator_id
            if isinstance(event, Message.Received):
                rows[key] = _received_row(event)
                continue
            row = rows.get(key)
            _fold(row if row is not None else patches.setdefault(key, {}), event)
        table = self.table
        born = [rows[key] for key in sorted(rows)]
        changed = {key: patches[key] for key in sorted(patches) if patches[key]}

        def write(connection: Connection) -> None:
            if connection.dialect.name == "postgresql":
                _write_postgres(connection, table, born, changed)
            else:
                _write_sqlite(connection, table, born, changed)

        return write

    def clear(self, connection: Connection) -> None:
        connection.execute(self.table.delete())


def _received_row(event: Message.Received) -> dict[str, Any]:
    return dict.fromkeys(_COLUMNS) | {
        "id": event.originator_id,
        "message_id": event.message_id,
        "channel": event.channel,
        "status": RECEIVED,
        "attempts": 0,
        "permanent": False,
        "correlation_id": event.correlation_id,
        "received_at": event.timestamp,
    }


def _fold(row: dict[str, Any], event: DomainEvent) -> None:
    """Set the columns a later event changes (on a whole row, or on a patch of one)."""
    if isinstance(event, Message.Attempted):
        row.update(status=IN_FLIGHT, attempts=event.attempt, last_provider=event.provider)
        row.update(attempted_at=event.timestamp, retry_at=None)
    elif isinstance(event, Message.BackedOff):
        row.update(status=BACKED_OFF, retry_at=event.retry_at, last_error=event.reason[:256])
    elif isinstance(event, Message.Delivered):
        row.update(status=DELIVERED, delivered_at=event.timestamp, retry_at=None)
    elif isinstance(event, Message.Failed):
        row.update(status=FAILED, failed_at=event.timestamp, last_error=event.reason[:256])
        row.update(permanent=event.permanent, retry_at=None)
    elif isinstance(event, Message.RetryRequested):
        row.update(status=RECEIVED, permanent=False, retry_at=event.timestamp)  # failed_at kept
    elif isinstance(event, Message.Archived):  # failed_at kept: when it failed
        row.update(status=ARCHIVED)
    elif isinstance(event, Message.Held):  # last_provider: the one it waits for
        row.update(status=HELD, retry_at=event.until, last_provider=event.provider)


#: Binary COPY types of ``message_status``'s columns, in order.
_TYPES = {
    "id": "uuid",
    "attempts": "int4",
    "permanent": "bool",
    **{c: "timestamptz" for c in ("received_at", "attempted_at", "delivered_at", "failed_at", "retry_at")},
}
#: The columns an event after Received may set (``_fold``), each with its bit in a patch's mask.
_PATCHED: tuple[str, ...] = ("status", "attempts", "last_provider", "last_error", "permanent")
_PATCHED += ("attempted_at", "delivered_at", "failed_at", "retry_at")


def _write_sqlite(
    connection: Connection, table: Table, born: list[dict[str, Any]], patches: dict[UUID, dict[str, Any]]
) -> None:
    """One upsert of the whole rows, then one ``UPDATE`` through ``executemany`` per set of columns."""
    execute_many(connection, (table, "upsert"), lambda: _upsert(connection, table), born)
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for key, patch in patches.items():
        groups.setdefault(tuple(sorted(patch)), []).append(patch | {"row_id": key})
    for columns, group in groups.items():
        execute_many(connection, (table, "update", columns), partial(_update, table, columns), group)


def _write_postgres(
    connection: Connection, table: Table, born: list[dict[str, Any]], patches: dict[UUID, dict[str, Any]]
) -> None:
    """Stage the batch in two temporary tables by binary COPY, then one upsert and one update.

    A patch carries a mask of the columns it sets; the others keep the row's value. (Per-row
    statements through ``executemany`` were a third of the projector's time on PostgreSQL.)
    """
    name = qualified_name(connection, table)
    if born:
        stage = f"smeg_born_{table.name}"
        connection.exec_driver_sql(
            f"CREATE TEMP TABLE IF NOT EXISTS {stage} (LIKE {name}) ON COMMIT DELETE ROWS"
        )
        types = [_TYPES.get(c, "text") for c in _COLUMNS]
        copy_rows(
            connection, f"pg_temp.{stage}", _COLUMNS, types, ([row[c] for c in _COLUMNS] for row in born)
        )
        columns = ", ".join(_COLUMNS)
        sets = ", ".join(f"{c} = excluded.{c}" for c in _COLUMNS if c != "id")
        connection.exec_driver_sql(
            f"INSERT INTO {name} ({columns}) SELECT {columns} FROM pg_temp.{stage} "
            f"ON CONFLICT (id) DO UPDATE SET {sets}"
        )
    if patches:
        stage = f"smeg_patch_{table.name}"
        patched = ", ".join(_PATCHED)
        connection.exec_driver_sql(
            f"CREATE TEMP TABLE IF NOT EXISTS {stage} ON COMMIT DELETE ROWS AS "
            f"SELECT id, 0 AS mask, {patched} FROM {name} WITH NO DATA"
        )
        rows = (
            [key, sum(1 << i for i, c in enumerate(_PATCHED) if c in patch)]
            + [patch.get(c) for c in _PATCHED]
            for key, patch in patches.items()
        )
        types = ["uuid", "int4", *(_TYPES.get(c, "text") for c in _PATCHED)]
        copy_rows(connection, f"pg_temp.{stage}", ("id", "mask", *_PATCHED), types, rows)
        sets = ", ".join(
            f"{c} = CASE WHEN p.mask & {1 << i} <> 0 THEN p.{c} ELSE m.{c} END"
            for i, c in enumerate(_PATCHED)
        )
        connection.exec_driver_sql(
            f"UPDATE {name} AS m SET {sets} FROM pg_temp.{stage} AS p WHERE m.id = p.id"
        )


def _update(table: Table, columns: tuple[str, ...]) -> Update:
    """Set ``columns`` of the row whose id is ``row_id`` (a message unknown here is left alone)."""
    return update(table).where(table.c.id == bindparam("row_id")).values({c: bindparam(c) for c in columns})


def _upsert(connection: Connection, table: Table) -> Any:
    dialect = connection.dialect.name
    module: Any = postgresql if dialect == "postgresql" else sqlite
    statement = module.insert(table)
    return statement.on_conflict_do_update(
        index_elements=[table.c.id],
        set_={c: statement.excluded[c] for c in _COLUMNS if c != "id"},
    )


#: Rows of ``unfinished`` read per query. Each query scans every unfinished row (the partial index
#: offers no order) and sorts them, so pages are large: walking 100,000 rows took 0.9-1.0 s here in
#: pages of 10,000 or 50,000, 0.75 s in one (most of it is building the rows in Python).


def unfinished(
    engine: Engine, *, stale_after: float, before: datetime | None = None, page_size: int = UNFINISHED_PAGE
) -> Iterator[list[tuple[UUID, datetime]]]:
    """Messages not yet Delivered or Failed, with when each is due for a look, page by page.

    Received: at once (``received_at``, or ``retry_at`` when a person asked for a retry); backed
    off or held: ``retry_at``; in flight: when the
    attempt turns stale. With ``before``, only those due before it (the orphan sweep).

    Every one of them, however many: pages of ``page_size`` rows in ``retry_at`` order (those
    without one, received or in flight, first), each page one short query that starts after the
    last row of the one before (keyset; ``id`` breaks ties). A row that stays unfinished during
    the walk is read exactly once; one that changes meanwhile is being handled by a live process.
    """
    stale = timedelta(seconds=stale_after)
    table = message_status
    columns = (table.c.id, table.c.status, table.c.received_at, table.c.attempted_at, table.c.retry_at)
    query = select(*columns).where(_unfinished)
    if before is not None:
        query = query.where(
            or_(
                and_(table.c.status == RECEIVED, table.c.received_at < before),
                and_(table.c.status.in_((BACKED_OFF, HELD)), table.c.retry_at < before),
                and_(table.c.status == IN_FLIGHT, table.c.attempted_at < before - stale),
            )
        )
    # NULLs sort first on SQLite and last on PostgreSQL: order by "has a retry_at" first.
    dated = case((table.c.retry_at.is_(None), 0), else_=1)
    query = query.order_by(dated, table.c.retry_at, table.c.id).limit(page_size)
    due = {
        RECEIVED: lambda r: r.retry_at or r.received_at,
        BACKED_OFF: lambda r: r.retry_at,
        HELD: lambda r: r.retry_at,
        IN_FLIGHT: lambda r: r.attempted_at + stale,
    }
    after: Any = None
    while True:
        page = query if after is None else query.where(_after_row(after))
        with engine.connect() as connection:
            rows = connection.execute(page).all()
        if not rows:
            return
        yield [(row.id, as_utc(due[row.status](row))) for row in rows]
        if len(rows) < page_size:
            return
        after = rows[-1]


def _after_row(row: Any) -> ColumnElement[bool]:
    """Rows after ``row`` in ``unfinished``'s order: (no retry_at, id), then (retry_at, id)."""
    table = message_status
    if row.retry_at is None:
        return or_(table.c.retry_at.is_not(None), and_(table.c.retry_at.is_(None), table.c.id > row.id))
    return or_(
        table.c.retry_at > row.retry_at,
        and_(table.c.retry_at == row.retry_at, table.c.id > row.id),
    )


def status_counts(engine: Engine) -> dict[str, int]:
    """How many messages are in each status."""
    query = select(message_status.c.status, func.count()).group_by(message_status.c.status)
    with engine.connect() as connection:
        return {status: count for status, count in connection.execute(query)}


class UnfinishedIndex:
    """The ``UnfinishedMessages`` port over ``message_status`` (see ``unfinished``)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def __call__(
        self, *, stale_after: float, before: datetime | None = None, page_size: int = UNFINISHED_PAGE
    ) -> Iterator[list[tuple[UUID, datetime]]]:
        return unfinished(self.engine, stale_after=stale_after, before=before, page_size=page_size)


def held_counts(engine: Engine) -> dict[str, int]:
    """Held messages per provider they wait for (none before the read model's first start)."""
    table = message_status
    with engine.connect() as connection:
        if not inspect(connection).has_table(table.name, schema=translated_schema(connection, table)):
            return {}
    query = select(table.c.last_provider, func.count()).where(table.c.status == HELD)
    with engine.connect() as connection:
        rows = connection.execute(query.group_by(table.c.last_provider)).all()
    return {str(provider): int(count) for provider, count in rows}


def failed_since(engine: Engine, since: datetime) -> dict[str, int]:
    """Messages that failed from ``since`` on, per provider they last tried (``failed_index``)."""
    table = message_status
    with engine.connect() as connection:
        if not inspect(connection).has_table(table.name, schema=translated_schema(connection, table)):
            return {}
        query = select(table.c.last_provider, func.count()).where(_failed, table.c.failed_at >= since)
        rows = connection.execute(query.group_by(table.c.last_provider)).all()
    return {str(provider or "(none)"): int(count) for provider, count in rows}
