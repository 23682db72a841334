"""Delivery statistics read models: counters with a latency histogram per hour and per minute,
messages by outcome per minute, failures by reason per day.

Three projections follow the event log (see ``adapters.projections``). Each batch's events are
summed in Python, then ONE upsert per table *adds* the sums to the stored counters, inside the
runner's transaction: the tables are exactly-once and a ``rebuild()`` reproduces them row for row.
Give each projection its own ``ProjectionRunner`` named after it (``name=projection.name``), so
each can be rebuilt (or shadow-rebuilt) on its own. The facts a counter needs about an event's
message (channel, received time, latest provider, outcome so far) come from
``adapters.message_facts``.

``delivery_stats_hourly`` — one row per (hour, provider, channel); event counters, which only grow,
each in the row of the hour its event's own timestamp falls in:

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

``delivery_stats_minutely`` — one row per (minute, provider, channel), kept by its own projection
(so an older database gets it filled from the whole log on first start). The same event counters
as ``delivery_stats_hourly``, for the minute of their event, and five columns that count
*messages* — each message in exactly one of them, in the row of the minute it was **received**,
under the provider that handles it: of its **latest attempt**; before its first, the provider it
was held for (``Held``), else the one requested, else ''. A message moves between them as it goes
(a later batch subtracts it from one and adds it to another), so these may go down:

=====================  =====  =================================================================
msg_delivered_first    int    delivered on its first attempt (attempt 1)
msg_delivered_retried  int    delivered on a later attempt (after a retry, a redrive included)
msg_failed_permanent   int    its latest outcome is a permanent Failed (the provider refused it)
msg_failed_exhausted   int    its latest outcome is Failed after its attempts ran out
msg_pending            int    not finished: not attempted yet, in flight, backed off or held
=====================  =====  =================================================================

A RetryRequested moves a failed message back to msg_pending; Archived leaves it failed. Minute
rows are kept like the hourly ones (they exist only for minutes with events, a small fraction of
the log they derive from): a window in the past is reported to the minute as well.

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

Canary messages (``domain.canary``) are left out of every table.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections import Counter, defaultdict
from collections.abc import Sequence
from datetime import date, datetime, timedelta, timezone
from typing import Any, ClassVar, Self

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

from adapters.message_facts import OUTCOMES, Facts, MessageFacts, utc
from adapters.projections import History, Projection, Write
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
#: The buckets' upper bounds in µs (a latency equal to a bound falls in its bucket).
_BOUNDS_US = tuple(bound * 1000 for _, bound in LATENCY_BUCKETS)
_MICROSECOND = timedelta(microseconds=1)
COUNTER_COLUMNS = (
    "received",
    "attempts",
    "delivered",
    "delivered_retried",
    "backed_off",
    "failed_permanent",
    "failed_exhausted",
)
#: The message columns of ``delivery_stats_minutely``, in the order the reports stack them.
OUTCOME_COLUMNS = OUTCOMES
HOURLY_KEY = ("hour", "provider", "channel")
MINUTELY_KEY = ("minute", "provider", "channel")
REASON_KEY = ("day", "provider", "reason")
REASON_COUNTERS = ("failed", "permanent", "exhausted", "backed_off")
REASON_LENGTH = 128


def _counters(*names: str) -> list[Column[Any]]:
    return [Column(name, Integer, nullable=False, default=0) for name in names]


def _event_counters() -> list[Column[Any]]:
    return [
        *_counters(*COUNTER_COLUMNS),
        Column("latency_sum_ms", BigInteger, nullable=False, default=0),
        *_counters("latency_count", *HISTOGRAM_COLUMNS),
    ]


delivery_stats_hourly = Table(
    "delivery_stats_hourly",
    metadata,
    Column("hour", DateTime(timezone=True), primary_key=True),
    Column("provider", String(64), primary_key=True),
    Column("channel", String(8), primary_key=True),
    *_event_counters(),
)

delivery_stats_minutely = Table(
    "delivery_stats_minutely",
    metadata,
    Column("minute", DateTime(timezone=True), primary_key=True),
    Column("provider", String(64), primary_key=True),
    Column("channel", String(8), primary_key=True),
    *_event_counters(),
    *_counters(*OUTCOME_COLUMNS),
)

failures_by_reason = Table(
    "failures_by_reason",
    metadata,
    Column("day", Date, primary_key=True),
    Column("provider", String(64), primary_key=True),
    Column("reason", String(REASON_LENGTH), primary_key=True),
    *_counters(*REASON_COUNTERS),
)

Sums = dict[Any, Counter[str]]


class _CountingProjection:
    """What the projections share: a counters table (retargetable for a rebuild) and message facts."""

    name: str

    def __init__(self, table: Table) -> None:
        self.table = table
        self.facts = MessageFacts()

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
    key: ClassVar[tuple[str, ...]] = HOURLY_KEY
    #: How long a row's period is, in seconds.
    period: ClassVar[int] = 3600

    def __init__(self, table: Table = delivery_stats_hourly) -> None:
        super().__init__(table)

    def prepare(self, connection: Connection, events: Sequence[DomainEvent], history: History) -> Write:
        """Sum the batch's counts per row; the write adds them to the stored rows."""
        self.facts.load(events, history)
        sums = self.sums(events)
        table, key, period = self.table, self.key, self.period
        columns = [c.name for c in table.columns if c.name not in key]

        def write(connection: Connection) -> None:
            _add(connection, table, key, columns, _dated(sums, period))

        return write

    def sums(self, events: Sequence[DomainEvent]) -> Sums:
        """The batch's counts, keyed by (period number since the epoch, provider, channel)."""
        sums: Sums = defaultdict(Counter)
        observe, period = self.facts.observe, self.period
        for event in events:
            row = observe(event)
            if not row.canary:
                _count_event(sums, _epoch(event.timestamp) // period, event, row)
        return sums


class DeliveryStatsMinutelyProjection(DeliveryStatsProjection):
    """Keeps ``delivery_stats_minutely`` (or a shadow copy) in step with the log: the hourly
    counters per minute, and each message under its outcome so far."""

    name = "delivery_stats_minutely"
    key = MINUTELY_KEY
    period = 60

    def __init__(self, table: Table = delivery_stats_minutely) -> None:
        super().__init__(table)

    def sums(self, events: Sequence[DomainEvent]) -> Sums:
        """The event counters per minute, and each message moved to its outcome's cell."""
        sums: Sums = defaultdict(Counter)
        known, observe = self.facts.known, self.facts.observe
        for event in events:
            # Before a Received, what memory holds is a fold that was rolled back: nothing counts.
            old = None if isinstance(event, Message.Received) else known.get(event.originator_id)
            before = (old.handler, old.outcome) if old is not None else None
            row = observe(event)
            if row.canary:
                continue
            _count_event(sums, _epoch(event.timestamp) // 60, event, row)
            if before != (row.handler, row.outcome) and row.received_at is not None:
                minute = _epoch(row.received_at) // 60
                if before is not None:
                    sums[minute, before[0], row.channel][before[1]] -= 1
                sums[minute, row.handler, row.channel][row.outcome] += 1
        return sums


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
                key = (utc(event.timestamp).date(), row.provider, event.reason[:REASON_LENGTH])
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
    """The statistics projections (give each its own ``ProjectionRunner``, named after it)."""
    return [DeliveryStatsProjection(), DeliveryStatsMinutelyProjection(), FailureReasonsProjection()]


def _count_event(sums: Sums, at: int, event: DomainEvent, row: Facts) -> None:
    """Add one event to the event counters of its row (``at``: its period's number)."""
    if isinstance(event, Message.Attempted):
        sums[at, event.provider, row.channel]["attempts"] += 1
    elif isinstance(event, Message.Delivered):
        counts = sums[at, event.provider, row.channel]
        counts["delivered"] += 1
        counts["delivered_retried"] += int(event.attempt > 1)
        if row.received_at is not None:
            _count_latency(counts, utc(event.timestamp) - row.received_at)
    elif isinstance(event, Message.Received):
        sums[at, event.provider or "", event.channel]["received"] += 1
    elif isinstance(event, Message.BackedOff):
        sums[at, row.provider, row.channel]["backed_off"] += 1
    elif isinstance(event, Message.Failed):
        kind = "failed_permanent" if event.permanent else "failed_exhausted"
        sums[at, row.provider, row.channel][kind] += 1


def _epoch(moment: datetime) -> int:
    """Whole seconds since the epoch (a naive moment is UTC)."""
    return int((moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).timestamp())


def _dated(sums: Sums, period: int) -> Sums:
    """``sums`` keyed by the start of each period (UTC) instead of its number."""
    return {
        (datetime.fromtimestamp(key[0] * period, timezone.utc), *key[1:]): row for key, row in sums.items()
    }


def _count_latency(counts: Counter[str], latency: timedelta) -> None:
    micros = max(0, latency // _MICROSECOND)
    counts["latency_sum_ms"] += round(micros / 1000)
    counts["latency_count"] += 1
    counts[HISTOGRAM_COLUMNS[bisect_left(_BOUNDS_US, micros)]] += 1


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
