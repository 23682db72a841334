"""Reads of the statistics read models (``adapters.stats_view``) for the reports — ``smeg report``
and the console use the same ones: a window and the bin it is read at, then sums of the event
counters and of the messages by outcome, per line (provider, channel), per bin or in total, and
failure reasons per provider.

A window up to ``MINUTES_UP_TO`` long is read per minute (``delivery_stats_minutely``), a longer
one per hour (``delivery_stats_hourly``); either way it is rounded *out* to whole bins, and
``Window`` says what was asked and what was covered. Messages by outcome are kept per minute
only: per hour they are summed from the minute rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Any, Literal

from sqlalchemy import ColumnElement, DateTime, Engine, Table, func, select, type_coerce

from adapters.message_facts import utc
from adapters.stats_view import (
    COUNTER_COLUMNS,
    HISTOGRAM_COLUMNS,
    OUTCOME_COLUMNS,
    REASON_COUNTERS,
    delivery_stats_hourly,
    delivery_stats_minutely,
    failures_by_reason,
)

MINUTE, HOUR = timedelta(minutes=1), timedelta(hours=1)
#: Windows up to this long are read per minute, longer ones per hour.
MINUTES_UP_TO = timedelta(hours=6)
#: The event counters a report sums (the histogram columns come after them).
EVENT_SUMS = (*COUNTER_COLUMNS, "latency_sum_ms", "latency_count", *HISTOGRAM_COLUMNS)
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

By = Literal["line", "bin", "bin_provider", "total"]
#: What a sum is keyed by: (provider, channel) per line, the bin's start per bin, (bin's start,
#: provider) per bin_provider, None in total.
Key = Any


@dataclass(frozen=True)
class Window:
    """A report's window: as asked, and as covered once rounded out to whole bins (UTC)."""

    asked_since: datetime
    asked_until: datetime
    #: ``MINUTE`` or ``HOUR``.
    bin: timedelta

    @property
    def since(self) -> datetime:
        """The start of the first bin covered."""
        return _floor(self.asked_since, self.bin)

    @property
    def until(self) -> datetime:
        """The end of the last bin covered (exclusive)."""
        floor = _floor(self.asked_until, self.bin)
        return floor if floor == self.asked_until else floor + self.bin

    @property
    def rounded(self) -> bool:
        """True when the covered window is wider than the one asked."""
        return (self.since, self.until) != (self.asked_since, self.asked_until)

    @property
    def bin_name(self) -> str:
        return "minute" if self.bin == MINUTE else "hour"

    def starts(self) -> list[datetime]:
        """The start of every bin covered, in order."""
        count = max(0, (self.until - self.since) // self.bin)
        return [self.since + n * self.bin for n in range(count)]


def window(since: datetime, until: datetime, bin: timedelta | None = None) -> Window:
    """The window ``[since, until)`` (naive means UTC), per minute when it is at most
    ``MINUTES_UP_TO`` long, else per hour, unless ``bin`` (``MINUTE`` or ``HOUR``) says."""
    since, until = utc(since), utc(until)
    if bin not in (None, MINUTE, HOUR):
        raise ValueError("bin must be one minute or one hour")
    return Window(since, until, bin or (MINUTE if until - since <= MINUTES_UP_TO else HOUR))


def event_sums(engine: Engine, span: Window, provider: str | None, by: By) -> dict[Key, dict[str, int]]:
    """The event counters (``EVENT_SUMS``) summed over the window, per ``by``, at its bin."""
    table = delivery_stats_minutely if span.bin == MINUTE else delivery_stats_hourly
    return _sums(engine, table, span, provider, by, EVENT_SUMS)


def outcome_sums(engine: Engine, span: Window, provider: str | None, by: By) -> dict[Key, dict[str, int]]:
    """The messages received in the window by outcome (``OUTCOME_COLUMNS``), per ``by``: each
    under the provider of its latest attempt ('' before the first)."""
    return _sums(engine, delivery_stats_minutely, span, provider, by, OUTCOME_COLUMNS)


def reason_sums(
    engine: Engine, span: Window, provider: str | None
) -> tuple[tuple[date, date], dict[tuple[str, str], dict[str, int]]]:
    """Failure reasons over the whole UTC days the window touches (they are kept per day): those
    days (first, last), and (provider, reason) → ``REASON_COUNTERS``; provider "*" sums all."""
    table = failures_by_reason
    days = (span.since.date(), (max(span.since, span.until - timedelta(microseconds=1))).date())
    where: list[ColumnElement[bool]] = [table.c.day >= days[0], table.c.day <= days[1]]
    if provider is not None:
        where.append(table.c.provider == provider)
    sums = [func.sum(table.c[n]) for n in REASON_COUNTERS]
    found: dict[tuple[str, str], dict[str, int]] = {}
    with engine.connect() as connection:
        for keys in ([table.c.provider, table.c.reason], [table.c.reason]):
            for row in connection.execute(select(*keys, *sums).where(*where).group_by(*keys)):
                name = row[0] if len(keys) == 2 else "*"
                counts = [int(v or 0) for v in row[len(keys) :]]
                found[name, row[len(keys) - 1]] = dict(zip(REASON_COUNTERS, counts, strict=True))
    return days, found


def _sums(
    engine: Engine, table: Table, span: Window, provider: str | None, by: By, columns: Sequence[str]
) -> dict[Key, dict[str, int]]:
    at = table.c.minute if table is delivery_stats_minutely else table.c.hour
    where: list[ColumnElement[bool]] = [at >= span.since, at < span.until]
    if provider is not None:
        where.append(table.c.provider == provider)
    keys: list[Any] = []
    if by == "line":
        keys = [table.c.provider, table.c.channel]
    elif by in ("bin", "bin_provider"):
        keys = [at if table is delivery_stats_hourly or span.bin == MINUTE else _hour_of(at, engine)]
        keys += [table.c.provider] if by == "bin_provider" else []
    sums = [func.sum(table.c[name]) for name in columns]
    with engine.connect() as connection:
        rows = connection.execute(select(*keys, *sums).where(*where).group_by(*keys)).all()
    found: dict[Key, dict[str, int]] = {}
    for row in rows:
        values = {name: int(value or 0) for name, value in zip(columns, row[len(keys) :], strict=True)}
        if by == "line":
            found[row[0], row[1]] = values
        elif by == "bin":
            found[utc(row[0])] = values
        elif by == "bin_provider":
            found[utc(row[0]), row[1]] = values
        else:
            found[None] = values
    return found


def _hour_of(column: Any, engine: Engine) -> Any:
    """``column`` (a UTC timestamp) truncated to its hour, in SQL."""
    if engine.dialect.name == "postgresql":
        return func.date_trunc("hour", func.timezone("UTC", column))
    return type_coerce(func.strftime("%Y-%m-%d %H:00:00.000000", column), DateTime())


def _floor(moment: datetime, size: timedelta) -> datetime:
    return _EPOCH + (moment - _EPOCH) // size * size
