"""Delivery statistics read models: counters with a latency histogram per hour and per minute,
messages by outcome per minute, failures by reason per day.

Three projections follow the event log (see ``adapters.projections``). Each batch's events are
summed in Python (``_count_events``: one pass, the read side's hot path), then ONE upsert per
table *adds* the sums to the stored counters (``adapters.sql.add_counts``), inside the runner's
transaction: the tables are exactly-once and a ``rebuild()`` reproduces them row for row.
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
from collections import defaultdict
from collections.abc import Sequence
from datetime import date, datetime, timedelta, timezone
from functools import partial
from operator import mul
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

from adapters.message_facts import (
    ATTEMPTED,
    BACKED_OFF,
    DELIVERED,
    FAILED,
    KINDS,
    OUTCOMES,
    RECEIVED,
    MessageFacts,
    kind_of,
    utc,
)
from adapters.projections import History, Projection, Write
from adapters.sql import add_counts, metadata

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
#: The columns a row of ``delivery_stats_hourly`` counts events in, in order.
EVENT_COLUMNS = (*COUNTER_COLUMNS, "latency_sum_ms", "latency_count", *HISTOGRAM_COLUMNS)
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

#: A row of sums: one int per counter column, in ``EVENT_COLUMNS`` (+ ``OUTCOME_COLUMNS``) order.
Row = list[int]
#: Rows keyed by (period number since the epoch, provider, channel).
Sums = dict[tuple[int, str, str], Row]
_RECEIVED, _ATTEMPTS, _DELIVERED, _RETRIED, _BACKED_OFF, _PERMANENT, _EXHAUSTED = range(7)
_LATENCY_SUM, _LATENCY_COUNT, _HISTOGRAM = range(7, 10)
#: Where each message of a batch stood before it: (handler, outcome), None if nowhere yet.
Standing = dict[int, tuple[str, str] | None]
#: Each outcome's place in a row of ``delivery_stats_minutely``.
_OUTCOME_AT = {name: len(EVENT_COLUMNS) + n for n, name in enumerate(OUTCOME_COLUMNS)}


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
    #: The counter columns, in the order of a ``Row``.
    columns: ClassVar[tuple[str, ...]] = EVENT_COLUMNS
    #: Whether messages are counted by outcome too (``OUTCOME_COLUMNS``).
    outcomes: ClassVar[bool] = False

    def __init__(self, table: Table = delivery_stats_hourly) -> None:
        super().__init__(table)

    def prepare(self, connection: Connection, events: Sequence[DomainEvent], history: History) -> Write:
        """Sum the batch's counts per row; the write adds them to the stored rows."""
        first = self.facts.load(events, history)
        sums = self.sums(events, self.facts.standing(first) if self.outcomes else None)
        table, key, columns, period = self.table, self.key, self.columns, self.period

        def write(connection: Connection) -> None:
            add_counts(connection, table, key, columns, _dated(sums, period))

        return write

    def sums(self, events: Sequence[DomainEvent], before: Standing | None = None) -> Sums:
        """The batch's counts, keyed by (period number since the epoch, provider, channel); with
        ``before`` (where each message of the batch stood before it), messages by outcome too."""
        sums: Sums = defaultdict(partial(mul, [0], len(self.columns)))
        _count_events(sums, events, self.facts, self.period)
        if before:
            _move(sums, before, self.facts)
        return sums


class DeliveryStatsMinutelyProjection(DeliveryStatsProjection):
    """Keeps ``delivery_stats_minutely`` (or a shadow copy) in step with the log: the hourly
    counters per minute, and each message under its outcome so far."""

    name = "delivery_stats_minutely"
    key = MINUTELY_KEY
    period = 60
    columns = (*EVENT_COLUMNS, *OUTCOME_COLUMNS)
    outcomes = True

    def __init__(self, table: Table = delivery_stats_minutely) -> None:
        super().__init__(table)


class FailureReasonsProjection(_CountingProjection):
    """Keeps ``failures_by_reason`` (or a shadow copy, for a rebuild) in step with the log."""

    name = "failures_by_reason"

    def __init__(self, table: Table = failures_by_reason) -> None:
        super().__init__(table)

    def prepare(self, connection: Connection, events: Sequence[DomainEvent], history: History) -> Write:
        """Sum the batch's Failed / BackedOff counts per reason; the write adds them."""
        self.facts.load(events, history)
        sums: dict[tuple[date, str, str], Row] = {}
        observe = self.facts.observe
        for event in events:
            kind = kind_of(event)
            facts = observe(event, kind)
            if kind in (FAILED, BACKED_OFF) and not facts.canary:
                fields: Any = event
                key = (utc(event.timestamp).date(), facts.provider, fields.reason[:REASON_LENGTH])
                row = _row(sums, key, len(REASON_COUNTERS))
                if kind == BACKED_OFF:
                    row[3] += 1
                else:
                    row[0] += 1
                    row[1 if fields.permanent else 2] += 1
        table = self.table

        def write(connection: Connection) -> None:
            add_counts(connection, table, REASON_KEY, REASON_COUNTERS, sums)

        return write


def stats_projections() -> list[Projection]:
    """The statistics projections (give each its own ``ProjectionRunner``, named after it)."""
    return [DeliveryStatsProjection(), DeliveryStatsMinutelyProjection(), FailureReasonsProjection()]


def _row(sums: dict[Any, Row], key: Any, width: int) -> Row:
    """The row of ``key``, a new one of zeros if missing."""
    row = sums.get(key)
    if row is None:
        row = sums[key] = [0] * width
    return row


def _count_events(sums: Sums, events: Sequence[DomainEvent], facts: MessageFacts, period: int) -> None:
    """Fold each event into its message's facts and add it to the event counters of its row
    (``period``: the rows' length in seconds). The hot path of the read side: one pass, one
    dict lookup per event to tell its kind, rows in a defaultdict of lists.
    """
    observe, kinds = facts.observe, KINDS
    for event in events:
        kind = kinds.get(type(event)) or kind_of(event)
        message = observe(event, kind)
        if message.canary:
            continue
        moment = event.timestamp
        at = int((moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).timestamp()) // period
        fields: Any = event  # its class is known from ``kind``
        if kind == ATTEMPTED:
            sums[at, fields.provider, message.channel][_ATTEMPTS] += 1
        elif kind == DELIVERED:
            row = sums[at, fields.provider, message.channel]
            row[_DELIVERED] += 1
            if fields.attempt > 1:
                row[_RETRIED] += 1
            if message.received_at is not None:
                micros = max(0, (utc(event.timestamp) - message.received_at) // _MICROSECOND)
                row[_LATENCY_SUM] += round(micros / 1000)
                row[_LATENCY_COUNT] += 1
                row[_HISTOGRAM + bisect_left(_BOUNDS_US, micros)] += 1
        elif kind == RECEIVED:
            sums[at, fields.provider or "", fields.channel][_RECEIVED] += 1
        elif kind == BACKED_OFF:
            sums[at, message.provider, message.channel][_BACKED_OFF] += 1
        elif kind == FAILED:
            sums[at, message.provider, message.channel][_PERMANENT if fields.permanent else _EXHAUSTED] += 1


def _move(sums: Sums, standing: Standing, facts: MessageFacts) -> None:
    """Move each message of a batch from where it stood before it (``standing``) to where it
    stands now, in the row of the minute it was received: −1 in the old cell, +1 in the new."""
    for key, before in standing.items():
        message = facts.known[key]
        if message.canary or message.received_at is None or before == (message.handler, message.outcome):
            continue
        minute = _epoch(message.received_at) // 60
        if before is not None:
            sums[minute, before[0], message.channel][_OUTCOME_AT[before[1]]] -= 1
        sums[minute, message.handler, message.channel][_OUTCOME_AT[message.outcome]] += 1


def _epoch(moment: datetime) -> int:
    """Whole seconds since the epoch (a naive moment is UTC)."""
    return int((moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).timestamp())


def _dated(sums: Sums, period: int) -> dict[tuple[Any, ...], Row]:
    """``sums`` keyed by the start of each period (UTC) instead of its number."""
    return {
        (datetime.fromtimestamp(key[0] * period, timezone.utc), *key[1:]): row for key, row in sums.items()
    }
