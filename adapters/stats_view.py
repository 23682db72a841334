"""Delivery statistics read models: hourly counters with a latency histogram, failures by reason.

Two projections follow the event log (see ``adapters.projections``). Each batch's events are
summed in Python, then ONE upsert per table *adds* the sums to the stored counters, inside the
runner's transaction: the tables are exactly-once and a ``rebuild()`` reproduces them row for row.
Every counter only grows; a row covers the events whose own timestamp falls in its hour / day.
Give each projection its own ``ProjectionRunner`` named after it (``name=projection.name``): its
side table belongs to it alone, so either can be rebuilt (or shadow-rebuilt) on its own.

``delivery_stats_hourly`` — one row per (hour, provider, channel):

=================  =======  ===================================================================
column             type     meaning
=================  =======  ===================================================================
hour               tstz     key: the counted events' timestamp truncated to the hour, UTC
provider           text     key: Received → the requested provider, '' when none was requested;
                            Attempted / Delivered → the event's provider; BackedOff / Failed →
                            the provider of the message's latest attempt ('' if unknown)
channel            text     key: the message's channel (``sms``, ``im``)
received           int      Received events (new send requests)
attempts           int      Attempted events (every attempt, retries included)
delivered          int      Delivered events
delivered_retried  int      Delivered events whose attempt number is > 1 (needed more than one try)
backed_off         int      BackedOff events (transient failure, another attempt scheduled)
failed_permanent   int      Failed events with permanent = true (the provider refused for good)
failed_exhausted   int      Failed events with permanent = false (the cycle's attempts ran out)
latency_sum_ms     bigint   sum of received → delivered latencies (Delivered.timestamp −
                            Received.timestamp, whole ms) of the row's Delivered events; a
                            redelivery after RetryRequested counts from the original Received
latency_count      int      how many latencies are in latency_sum_ms and in the histogram
lat_le_100ms …     int      latency histogram, NOT cumulative: lat_le_X counts latencies in
lat_le_3600s                (previous bound, X]; bounds 100 ms, 250 ms, 500 ms, 1 s, 2.5 s, 5 s,
                            10 s, 30 s, 60 s, 300 s, 900 s, 3600 s
lat_gt_3600s       int      latencies over one hour
=================  =======  ===================================================================

Mean latency = latency_sum_ms / latency_count; a quantile is estimated as the upper bound of the
bucket holding it (histograms of several rows add up column by column).

``failures_by_reason`` — one row per (day, provider, reason):

=================  =======  ===================================================================
day                date     key: the event's UTC date
provider           text     key: provider of the message's latest attempt ('' if unknown)
reason             text     key: the event's reason (first 128 characters)
failed             int      Failed events with this reason
permanent          int      … of which permanent
exhausted          int      … of which not permanent (attempts exhausted)
backed_off         int      BackedOff events with this reason (transient failures)
=================  =======  ===================================================================

``stats_message_info`` / ``failures_message_info`` — each projection's own side table, one row
per message: id (uuid, key), channel, received_at (Received's timestamp, NULL if unseen) and
provider (the latest Attempted's provider, '' before any). Written in the same transaction as the
counters; nothing is deleted on delivery (a RetryRequested may lead to another delivery).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from datetime import date, datetime, timedelta, timezone
from typing import Any, Self
from uuid import UUID

from eventsourcing.domain import DomainEvent
from sqlalchemy import BigInteger, Column, Connection, Date, DateTime, Integer, String, Table, Uuid, select
from sqlalchemy.dialects import postgresql, sqlite

from adapters.projections import Projection, Write
from adapters.sql import execute_many, metadata
from domain.message import Message

#: Histogram columns and their upper bounds in ms (the last bucket is unbounded).
LATENCY_BUCKETS: tuple[tuple[str, float], ...] = (
    ("lat_le_100ms", 100),
    ("lat_le_250ms", 250),
    ("lat_le_500ms", 500),
    ("lat_le_1s", 1_000),
    ("lat_le_2_5s", 2_500),
    ("lat_le_5s", 5_000),
    ("lat_le_10s", 10_000),
    ("lat_le_30s", 30_000),
    ("lat_le_60s", 60_000),
    ("lat_le_300s", 300_000),
    ("lat_le_900s", 900_000),
    ("lat_le_3600s", 3_600_000),
    ("lat_gt_3600s", math.inf),
)
HISTOGRAM_COLUMNS = tuple(name for name, _ in LATENCY_BUCKETS)
COUNTER_COLUMNS = (
    "received",
    "attempts",
    "delivered",
    "delivered_retried",
    "backed_off",
    "failed_permanent",
    "failed_exhausted",
)
HOURLY_KEY = ("hour", "provider", "channel")
REASON_KEY = ("day", "provider", "reason")
REASON_COUNTERS = ("failed", "permanent", "exhausted", "backed_off")
REASON_LENGTH = 128

delivery_stats_hourly = Table(
    "delivery_stats_hourly",
    metadata,
    Column("hour", DateTime(timezone=True), primary_key=True),
    Column("provider", String(64), primary_key=True),
    Column("channel", String(8), primary_key=True),
    *(Column(name, Integer, nullable=False, default=0) for name in COUNTER_COLUMNS),
    Column("latency_sum_ms", BigInteger, nullable=False, default=0),
    Column("latency_count", Integer, nullable=False, default=0),
    *(Column(name, Integer, nullable=False, default=0) for name in HISTOGRAM_COLUMNS),
)

failures_by_reason = Table(
    "failures_by_reason",
    metadata,
    Column("day", Date, primary_key=True),
    Column("provider", String(64), primary_key=True),
    Column("reason", String(REASON_LENGTH), primary_key=True),
    *(Column(name, Integer, nullable=False, default=0) for name in REASON_COUNTERS),
)


def _info_table(name: str) -> Table:
    return Table(
        name,
        metadata,
        Column("id", Uuid, primary_key=True),
        Column("channel", String(8), nullable=False),
        Column("received_at", DateTime(timezone=True)),
        Column("provider", String(64), nullable=False),
    )


stats_message_info = _info_table("stats_message_info")
failures_message_info = _info_table("failures_message_info")


class _CountingProjection:
    """What both projections share: a counters table and a side table, retargetable for a rebuild."""

    name: str

    def __init__(self, table: Table, info: Table) -> None:
        self.table, self.info = table, info

    @property
    def tables(self) -> list[Table]:
        """The tables this projection writes."""
        return [self.table, self.info]

    def retarget(self, tables: dict[str, Table]) -> Self:
        """The same projection writing to other tables (keyed by live name), for a rebuild."""
        return type(self)(tables[self.table.name], tables[self.info.name])

    def clear(self, connection: Connection) -> None:
        """Delete every row of both tables."""
        connection.execute(self.table.delete())
        connection.execute(self.info.delete())


class DeliveryStatsProjection(_CountingProjection):
    """Keeps ``delivery_stats_hourly`` and ``stats_message_info`` (or shadow copies) in step with the log.

    Args:
        table: the hourly counters table.
        info: the side table of per-message facts.
    """

    name = "delivery_stats_hourly"

    def __init__(self, table: Table = delivery_stats_hourly, info: Table = stats_message_info) -> None:
        super().__init__(table, info)

    def prepare(self, connection: Connection, events: Sequence[DomainEvent]) -> Write:
        """Sum the batch's counts per hour; the write adds them to the hourly rows."""
        info = _MessageInfo(self.info, connection, events)
        sums: dict[tuple[datetime, str, str], Counter[str]] = defaultdict(Counter)
        for event in events:
            row = info.observe(event)
            hour = _utc(event.timestamp).replace(minute=0, second=0, microsecond=0)
            if isinstance(event, Message.Received):
                sums[hour, event.provider or "", event.channel]["received"] += 1
            elif isinstance(event, Message.Attempted):
                sums[hour, event.provider, row["channel"]]["attempts"] += 1
            elif isinstance(event, Message.BackedOff):
                sums[hour, row["provider"], row["channel"]]["backed_off"] += 1
            elif isinstance(event, Message.Failed):
                kind = "failed_permanent" if event.permanent else "failed_exhausted"
                sums[hour, row["provider"], row["channel"]][kind] += 1
            elif isinstance(event, Message.Delivered):
                counts = sums[hour, event.provider, row["channel"]]
                counts["delivered"] += 1
                counts["delivered_retried"] += int(event.attempt > 1)
                if row["received_at"] is not None:
                    _count_latency(counts, _utc(event.timestamp) - _utc(row["received_at"]))
        table = self.table
        columns = [c.name for c in table.columns if c.name not in HOURLY_KEY]

        def write(connection: Connection) -> None:
            info.save(connection)
            _add(connection, table, HOURLY_KEY, columns, sums)

        return write


class FailureReasonsProjection(_CountingProjection):
    """Keeps ``failures_by_reason`` and ``failures_message_info`` (or shadow copies) in step with the log.

    Args:
        table: the per-reason counters table.
        info: the side table of per-message facts.
    """

    name = "failures_by_reason"

    def __init__(self, table: Table = failures_by_reason, info: Table = failures_message_info) -> None:
        super().__init__(table, info)

    def prepare(self, connection: Connection, events: Sequence[DomainEvent]) -> Write:
        """Sum the batch's Failed / BackedOff counts per reason; the write adds them."""
        info = _MessageInfo(self.info, connection, events)
        sums: dict[tuple[date, str, str], Counter[str]] = defaultdict(Counter)
        for event in events:
            row = info.observe(event)
            if isinstance(event, Message.Failed | Message.BackedOff):
                key = (_utc(event.timestamp).date(), row["provider"], event.reason[:REASON_LENGTH])
                if isinstance(event, Message.BackedOff):
                    sums[key]["backed_off"] += 1
                else:
                    sums[key]["failed"] += 1
                    sums[key]["permanent" if event.permanent else "exhausted"] += 1
        table = self.table

        def write(connection: Connection) -> None:
            info.save(connection)
            _add(connection, table, REASON_KEY, REASON_COUNTERS, sums)

        return write


def stats_projections() -> list[Projection]:
    """Both statistics projections (give each its own ``ProjectionRunner``, named after it)."""
    return [DeliveryStatsProjection(), FailureReasonsProjection()]


class _MessageInfo:
    """A side table's rows for a batch's messages: read in one SELECT, folded, written in one upsert."""

    def __init__(self, table: Table, connection: Connection, events: Sequence[DomainEvent]) -> None:
        self.table = table
        self.rows: dict[UUID, dict[str, Any]] = {}
        ids = {e.originator_id for e in events} - _received_in(events)
        if ids:
            query = select(table).where(table.c.id.in_(ids))
            self.rows = {row.id: dict(row._mapping) for row in connection.execute(query)}
        self.changed: set[UUID] = set()

    def observe(self, event: DomainEvent) -> dict[str, Any]:
        """Fold the event into its message's info; return the info as of that event."""
        key = event.originator_id
        if isinstance(event, Message.Received):
            self.rows[key] = dict(
                id=key, channel=event.channel, received_at=_utc(event.timestamp), provider=""
            )
            self.changed.add(key)
        row = self.rows.get(key)
        if row is None:  # no Received seen (cannot happen when following the log from its start)
            row = self.rows[key] = dict(id=key, channel="", received_at=None, provider="")
            self.changed.add(key)
        if isinstance(event, Message.Attempted):
            row["provider"] = event.provider
            self.changed.add(key)
        return row

    def save(self, connection: Connection) -> None:
        if not self.changed:
            return

        def upsert() -> Any:
            statement = _insert(connection, self.table)
            return statement.on_conflict_do_update(
                index_elements=[self.table.c.id],
                set_={c: statement.excluded[c] for c in ("channel", "received_at", "provider")},
            )

        execute_many(
            connection, (self.table, "upsert"), upsert, [self.rows[key] for key in sorted(self.changed)]
        )


def _received_in(events: Sequence[DomainEvent]) -> set[UUID]:
    """Messages born in this batch: nothing about them can be in the tables yet."""
    return {e.originator_id for e in events if isinstance(e, Message.Received)}


def _count_latency(counts: Counter[str], latency: timedelta) -> None:
    micros = max(0, latency // timedelta(microseconds=1))
    counts["latency_sum_ms"] += round(micros / 1000)
    counts["latency_count"] += 1
    for column, bound_ms in LATENCY_BUCKETS:
        if micros <= bound_ms * 1000:
            counts[column] += 1
            return


def _add(
    connection: Connection,
    table: Table,
    key: Sequence[str],
    columns: Sequence[str],
    sums: dict[Any, Counter[str]],
) -> None:
    """One upsert adding ``sums`` (key tuple → column counts) to the stored counters."""
    if not sums:
        return

    def upsert() -> Any:
        statement = _insert(connection, table)
        return statement.on_conflict_do_update(
            index_elements=[table.c[k] for k in key],
            set_={c: table.c[c] + statement.excluded[c] for c in columns},
        )

    rows = [dict(zip(key, k, strict=True)) | {c: sums[k][c] for c in columns} for k in sorted(sums)]
    execute_many(connection, (table, "add", tuple(columns)), upsert, rows)


def _insert(connection: Connection, table: Table) -> Any:
    module: Any = postgresql if connection.dialect.name == "postgresql" else sqlite
    return module.insert(table)


def _utc(value: datetime) -> datetime:
    return value.astimezone(timezone.utc) if value.tzinfo else value.replace(tzinfo=timezone.utc)
