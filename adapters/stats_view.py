"""Delivery statistics read models: hourly counters with a latency histogram, failures by reason.

Two projections follow the event log (see ``adapters.projections``). Each batch's events are
summed in Python, then ONE upsert per table *adds* the sums to the stored counters, inside the
runner's transaction: the tables are exactly-once and a ``rebuild()`` reproduces them row for row.
Every counter only grows; a row covers the events whose own timestamp falls in its hour / day.
Give each projection its own ``ProjectionRunner`` named after it (``name=projection.name``), so
either can be rebuilt (or shadow-rebuilt) on its own.

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

What a counter needs to know about an event's message — its channel, when it was received, the
provider of its latest attempt — comes from the message's own earlier events: kept in memory
while the message is in progress and read back from the event store after a restart (see
``_MessageFacts``). The history is immutable, so no table of our own has to keep it.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from itertools import islice
from typing import Any, Self
from uuid import UUID

from eventsourcing.domain import DomainEvent
from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Date,
    DateTime,
    Integer,
    String,
    Table,
)
from sqlalchemy.dialects import postgresql, sqlite

from adapters.projections import History, Projection, Write
from adapters.sql import execute_many, metadata
from domain.canary import is_canary
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


class _CountingProjection:
    """What both projections share: a counters table (retargetable for a rebuild) and message facts."""

    name: str

    def __init__(self, table: Table) -> None:
        self.table = table
        self.facts = _MessageFacts()

    @property
    def tables(self) -> list[Table]:
        """The tables this projection writes."""
        return [self.table]

    def retarget(self, tables: dict[str, Table]) -> Self:
        """The same projection writing to another table (keyed by live name), for a rebuild."""
        return type(self)(tables[self.table.name])

    def clear(self, connection: Connection) -> None:
        """Delete every row."""
        connection.execute(self.table.delete())


class DeliveryStatsProjection(_CountingProjection):
    """Keeps ``delivery_stats_hourly`` (or a shadow copy, for a rebuild) in step with the log."""

    name = "delivery_stats_hourly"

    def __init__(self, table: Table = delivery_stats_hourly) -> None:
        super().__init__(table)

    def prepare(self, connection: Connection, events: Sequence[DomainEvent], history: History) -> Write:
        """Sum the batch's counts per hour; the write adds them to the hourly rows."""
        self.facts.load(events, history)
        sums: dict[tuple[datetime, str, str], Counter[str]] = defaultdict(Counter)
        for event in events:
            row = self.facts.observe(event)
            if row.canary:
                continue
            hour = _utc(event.timestamp).replace(minute=0, second=0, microsecond=0)
            if isinstance(event, Message.Received):
                sums[hour, event.provider or "", event.channel]["received"] += 1
            elif isinstance(event, Message.Attempted):
                sums[hour, event.provider, row.channel]["attempts"] += 1
            elif isinstance(event, Message.BackedOff):
                sums[hour, row.provider, row.channel]["backed_off"] += 1
            elif isinstance(event, Message.Failed):
                kind = "failed_permanent" if event.permanent else "failed_exhausted"
                sums[hour, row.provider, row.channel][kind] += 1
            elif isinstance(event, Message.Delivered):
                counts = sums[hour, event.provider, row.channel]
                counts["delivered"] += 1
                counts["delivered_retried"] += int(event.attempt > 1)
                if row.received_at is not None:
                    _count_latency(counts, _utc(event.timestamp) - row.received_at)
        table = self.table
        columns = [c.name for c in table.columns if c.name not in HOURLY_KEY]

        def write(connection: Connection) -> None:
            _add(connection, table, HOURLY_KEY, columns, sums)

        return write


class FailureReasonsProjection(_CountingProjection):
    """Keeps ``failures_by_reason`` (or a shadow copy, for a rebuild) in step with the log."""

    name = "failures_by_reason"

    def __init__(self, table: Table = failures_by_reason) -> None:
        super().__init__(table)

    def prepare(self, connection: Connection, events: Sequence[DomainEvent], history: History) -> Write:
        """Sum the batch's Failed / BackedOff counts per reason; the write adds them."""
        self.facts.load(events, history)
        sums: dict[tuple[date, str, str], Counter[str]] = defaultdict(Counter)
        for event in events:
            row = self.facts.observe(event)
            if row.canary:
                continue
            if isinstance(event, Message.Failed | Message.BackedOff):
                key = (_utc(event.timestamp).date(), row.provider, event.reason[:REASON_LENGTH])
                if isinstance(event, Message.BackedOff):
                    sums[key]["backed_off"] += 1
                else:
                    sums[key]["failed"] += 1
                    sums[key]["permanent" if event.permanent else "exhausted"] += 1
        table = self.table

        def write(connection: Connection) -> None:
            _add(connection, table, REASON_KEY, REASON_COUNTERS, sums)

        return write


def stats_projections() -> list[Projection]:
    """Both statistics projections (give each its own ``ProjectionRunner``, named after it)."""
    return [DeliveryStatsProjection(), FailureReasonsProjection()]


@dataclass(slots=True)
class _Facts:
    """A message as a counter sees it, as of its event ``version``."""

    version: int
    channel: str
    received_at: datetime | None
    provider: str
    ended: bool = False
    #: A synthetic request of the canary: the reports leave it out.
    canary: bool = False


class _MessageFacts:
    """Each in-progress message's facts, in memory; recovered from its own history when missing.

    An entry is trusted only if it is as of the version just before the message's first event in
    the batch. Otherwise — after a restart, an eviction, or a batch that was folded and then
    rolled back — the message's earlier events are read from the store (``history``) and folded.
    Between batches, entries of messages that ended (Delivered, or Failed: only a rare
    RetryRequested can follow, and then the history is read) are dropped, and the oldest go when
    more than ``capacity`` remain; never during a batch, whose entries were checked by ``load``.
    """

    def __init__(self, capacity: int = 200_000) -> None:
        self.known: dict[UUID, _Facts] = {}
        self.ended: list[UUID] = []
        self.capacity = capacity

    def load(self, events: Sequence[DomainEvent], history: History) -> None:
        """Make sure every message of ``events`` is known as of just before its first event here."""
        self._evict()
        first: dict[UUID, int] = {}
        for event in events:
            first.setdefault(event.originator_id, event.originator_version)
        known = self.known
        missing = [
            key
            for key, version in first.items()
            if version > 1 and ((facts := known.get(key)) is None or facts.version != version - 1)
        ]
        if missing:
            for key in missing:
                known.pop(key, None)
            for key, earlier in history(missing).items():
                for event in earlier:
                    if event.originator_version >= first[key]:
                        break
                    self.observe(event)

    def observe(self, event: DomainEvent) -> _Facts:
        """Fold the event into its message's facts; return them as of that event."""
        key = event.originator_id
        if isinstance(event, Message.Received):
            received = _Facts(
                event.originator_version,
                event.channel,
                _utc(event.timestamp),
                "",
                canary=is_canary(event.metadata),
            )
            self.known[key] = received
            return received
        facts = self.known.get(key)
        if facts is None:  # no Received in its history (cannot happen while the log is whole)
            facts = self.known[key] = _Facts(event.originator_version, "", None, "")
        facts.version = event.originator_version
        if isinstance(event, Message.Attempted):
            facts.provider = event.provider
        elif isinstance(event, Message.Delivered | Message.Failed):
            facts.ended = True
            self.ended.append(key)
        elif isinstance(event, Message.RetryRequested):
            facts.ended = False
        return facts

    def _evict(self) -> None:
        known = self.known
        for key in self.ended:
            facts = known.get(key)
            if facts is not None and facts.ended:
                del known[key]
        self.ended.clear()
        if len(known) > self.capacity:
            for key in list(islice(known, len(known) - self.capacity // 2)):
                del known[key]


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
