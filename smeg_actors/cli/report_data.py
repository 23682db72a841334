"""The numbers of a delivery report, from the statistics read models (``adapters.stats_queries``):
lines per provider and channel, the total, bins for the chart, top failure reasons. A console
builds its report with the same ``build_report`` (and ``adapters.stats_queries``).

Two kinds of figure, kept apart:

- **messages** (``Line.messages``, ``Outcomes``): the messages *received* in the window, each
  counted once, under the provider of its latest attempt, by where it stands now;
- **events**: what happened in the window — attempts, backoffs, deliveries and failures of any
  message, whenever it was received — and the rates and latencies derived from them:
  delivery rate = delivered / (delivered + failed); retry rate = delivered_retried / delivered;
  backoff rate = backed_off / attempts; p50 / p95 latency (received → delivered) = the upper bound
  of the histogram bucket holding that quantile (``inf`` when it lies in the > 1 h bucket).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import Engine

from adapters.message_facts import (
    DELIVERED_FIRST,
    DELIVERED_RETRIED,
    FAILED_EXHAUSTED,
    FAILED_PERMANENT,
    PENDING,
)
from adapters.stats_queries import Window, event_sums, outcome_sums, reason_sums, window
from adapters.stats_view import COUNTER_COLUMNS, HISTOGRAM_COLUMNS, LATENCY_BUCKETS

#: ``Outcomes`` field → ``delivery_stats_minutely`` column.
OUTCOME_FIELDS = {
    "delivered_first_try": DELIVERED_FIRST,
    "delivered_after_retry": DELIVERED_RETRIED,
    "failed_permanent": FAILED_PERMANENT,
    "failed_exhausted": FAILED_EXHAUSTED,
    "pending": PENDING,
}


def histogram_quantile(counts: Sequence[int], q: float) -> float | None:
    """Estimate a quantile from non-cumulative bucket counts (``LATENCY_BUCKETS`` order).

    Args:
        counts: one count per bucket.
        q: the quantile, in (0, 1].

    Returns:
        The upper bound (ms) of the bucket holding the quantile, ``math.inf`` for the overflow
        bucket, None when the histogram is empty.
    """
    if not 0 < q <= 1:
        raise ValueError("q must be in (0, 1]")
    if len(counts) != len(LATENCY_BUCKETS):
        raise ValueError(f"expected {len(LATENCY_BUCKETS)} bucket counts, got {len(counts)}")
    total = sum(counts)
    if total <= 0:
        return None
    rank = max(1, math.ceil(q * total - 1e-9))
    cumulative = 0
    for (_, bound), count in zip(LATENCY_BUCKETS, counts, strict=True):
        cumulative += count
        if cumulative >= rank:
            return bound
    return math.inf


@dataclass(frozen=True)
class ReasonCount:
    """How often one reason ended an attempt: Failed (permanent / exhausted) and BackedOff."""

    reason: str
    failed: int = 0
    permanent: int = 0
    exhausted: int = 0
    backed_off: int = 0


@dataclass(frozen=True)
class Outcomes:
    """Messages received in a window (or a bin), each counted once, by where it stands now."""

    delivered_first_try: int = 0
    delivered_after_retry: int = 0
    failed_permanent: int = 0
    failed_exhausted: int = 0
    pending: int = 0

    @classmethod
    def of(cls, sums: Mapping[str, int]) -> Outcomes:
        """From the sums of ``delivery_stats_minutely``'s message columns."""
        return cls(**{name: sums.get(column, 0) for name, column in OUTCOME_FIELDS.items()})

    @property
    def received(self) -> int:
        return sum(getattr(self, name) for name in OUTCOME_FIELDS)

    @property
    def delivered(self) -> int:
        return self.delivered_first_try + self.delivered_after_retry

    @property
    def failed(self) -> int:
        return self.failed_permanent + self.failed_exhausted

    def as_dict(self) -> dict[str, int]:
        """``received`` and each outcome."""
        return {"received": self.received} | {name: getattr(self, name) for name in OUTCOME_FIELDS}


@dataclass
class Line:
    """One provider and channel (or everything, for the total): its messages and its events.

    ``received`` is the messages received in the window under the provider of their latest
    attempt ('' before any), the same as ``messages.received``; the other counters are events.
    """

    provider: str
    channel: str
    received: int = 0
    attempts: int = 0
    delivered: int = 0
    delivered_retried: int = 0
    backed_off: int = 0
    failed_permanent: int = 0
    failed_exhausted: int = 0
    latency_sum_ms: int = 0
    latency_count: int = 0
    histogram: tuple[int, ...] = (0,) * len(HISTOGRAM_COLUMNS)
    messages: Outcomes = field(default_factory=Outcomes)

    @property
    def failed(self) -> int:
        return self.failed_permanent + self.failed_exhausted

    @property
    def delivery_rate(self) -> float | None:
        return _ratio(self.delivered, self.delivered + self.failed)

    @property
    def retry_rate(self) -> float | None:
        return _ratio(self.delivered_retried, self.delivered)

    @property
    def backoff_rate(self) -> float | None:
        return _ratio(self.backed_off, self.attempts)

    @property
    def mean_latency_ms(self) -> float | None:
        return _ratio(self.latency_sum_ms, self.latency_count)

    @property
    def p50_ms(self) -> float | None:
        return histogram_quantile(self.histogram, 0.5)

    @property
    def p95_ms(self) -> float | None:
        return histogram_quantile(self.histogram, 0.95)

    @property
    def empty(self) -> bool:
        """Nothing to show: no message received, no attempt, no outcome."""
        return not (self.received or self.attempts or self.delivered or self.backed_off or self.failed)

    def as_dict(self) -> dict[str, Any]:
        """Every counter and every derived figure (latencies in ms, rates in [0, 1])."""
        skip = ("histogram", "messages")
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip}
        data["histogram"] = dict(zip(HISTOGRAM_COLUMNS, self.histogram, strict=True))
        for name in ("failed", "delivery_rate", "retry_rate", "backoff_rate", "mean_latency_ms"):
            data[name] = getattr(self, name)
        data["p50_ms"], data["p95_ms"] = self.p50_ms, self.p95_ms
        data["messages"] = self.messages.as_dict()
        return data


@dataclass
class Report:
    """A delivery report: one line per provider and channel, the total, top failure reasons."""

    #: The window as asked (UTC); ``window`` says the bin and what was covered.
    since: datetime
    until: datetime
    provider: str | None
    lines: list[Line]
    total: Line
    #: Top failure reasons per provider (all channels), and under "*" over all providers.
    reasons: dict[str, list[ReasonCount]] = field(default_factory=dict)
    window: Window | None = None
    #: The UTC days the reasons cover (first, last): they are kept per day.
    reason_days: tuple[date, date] | None = None


@dataclass(frozen=True)
class Bin:
    """One bin of the chart: the messages received in it, and its events (``Line``)."""

    start: datetime
    messages: Outcomes
    events: Line


def build_report(
    engine: Engine,
    since: datetime,
    until: datetime,
    provider: str | None = None,
    *,
    top: int = 5,
    bin: timedelta | None = None,
) -> Report:
    """Compute a report from the statistics read models.

    Args:
        engine: where the read models live.
        since: window start (naive means UTC), rounded down to its bin.
        until: window end, exclusive, rounded up to its bin.
        provider: only this provider; None for all.
        top: how many failure reasons to keep per provider.
        bin: ``stats_queries.MINUTE`` or ``HOUR``; None picks minutes for a window of up to
            ``MINUTES_UP_TO``, else hours.
    """
    span = window(since, until, bin)
    days, found = reason_sums(engine, span, provider)
    return Report(
        span.asked_since,
        span.asked_until,
        provider,
        [line for line in _lines(engine, span, provider) if not line.empty],
        _total(engine, span, provider),
        _ranked(found, top),
        span,
        days,
    )


def report_bins(
    engine: Engine, since: datetime, until: datetime, provider: str | None, bin: timedelta | None = None
) -> tuple[Window, list[Bin]]:
    """Every bin of the window, empty ones included, in order (for the chart)."""
    span = window(since, until, bin)
    events = event_sums(engine, span, provider, "bin")
    messages = outcome_sums(engine, span, provider, "bin")
    return span, [
        Bin(start, Outcomes.of(messages.get(start, {})), _line(("*", "*"), events.get(start), None))
        for start in span.starts()
    ]


def _lines(engine: Engine, span: Window, provider: str | None) -> list[Line]:
    """One line per (provider, channel) with events or messages in the window."""
    events = event_sums(engine, span, provider, "line")
    messages = outcome_sums(engine, span, provider, "line")
    keys = sorted({*events, *messages}, key=_order)
    return [_line(key, events.get(key), messages.get(key)) for key in keys]


def _total(engine: Engine, span: Window, provider: str | None) -> Line:
    events = event_sums(engine, span, provider, "total").get(None)
    return _line(("*", "*"), events, outcome_sums(engine, span, provider, "total").get(None))


def _ranked(found: Mapping[tuple[str, str], Mapping[str, int]], top: int) -> dict[str, list[ReasonCount]]:
    """The ``top`` reasons of each provider: most failed first, then most backed off."""
    reasons: dict[str, list[ReasonCount]] = {}
    for (name, reason), counts in found.items():
        reasons.setdefault(name, []).append(ReasonCount(reason, **counts))
    return {
        name: sorted(counted, key=lambda r: (-r.failed, -r.backed_off, r.reason))[:top]
        for name, counted in reasons.items()
    }


def _line(key: tuple[str, str], events: Mapping[str, int] | None, messages: Mapping[str, int] | None) -> Line:
    line = Line(*key)
    events = events or {}
    for name in (*COUNTER_COLUMNS, "latency_sum_ms", "latency_count"):
        setattr(line, name, events.get(name, 0))
    line.histogram = tuple(events.get(name, 0) for name in HISTOGRAM_COLUMNS)
    line.messages = Outcomes.of(messages or {})
    line.received = line.messages.received
    return line


def _order(key: tuple[str, str]) -> tuple[bool, str, str]:
    """Providers by name, messages not attempted yet ('') last."""
    return (key[0] == "", *key)


def _ratio(part: float, whole: float) -> float | None:
    return part / whole if whole else None
