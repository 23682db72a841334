"""Delivery reports from the statistics read models (``adapters.stats_view``): numbers, text, a chart.

Definitions (all over the events whose timestamp falls in the window; hourly rows are included
when their hour overlaps ``[since, until)``, failure reasons when their UTC day does):

- delivery rate = delivered / (delivered + failed): the share of recorded outcomes that were
  deliveries (a message failed, retried and then delivered counts one of each).
- retry rate = delivered_retried / delivered: the share of deliveries that needed more than one
  attempt. backoff rate = backed_off / attempts: the share of attempts that ended in a backoff.
- p50 / p95 latency (received → delivered) = the upper bound of the histogram bucket holding that
  quantile (an over-estimate by at most one bucket; ``inf`` when it lies in the > 1 h bucket).
- received counts sit under the *requested* provider ('' when none was requested).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import ColumnElement, Engine, func, select

from adapters.stats_view import (
    COUNTER_COLUMNS,
    HISTOGRAM_COLUMNS,
    LATENCY_BUCKETS,
    REASON_COUNTERS,
    delivery_stats_hourly,
    failures_by_reason,
)

FORMATS = ("table", "json", "csv")


class ChartUnavailableError(RuntimeError):
    """matplotlib is not installed (the optional ``chart`` extra)."""


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


@dataclass
class Line:
    """The counters of one provider and channel (or of everything, for the total)."""

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

    def as_dict(self) -> dict[str, Any]:
        """Every counter and every derived figure (latencies in ms, rates in [0, 1])."""
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "histogram"}
        data["histogram"] = dict(zip(HISTOGRAM_COLUMNS, self.histogram, strict=True))
        for name in ("failed", "delivery_rate", "retry_rate", "backoff_rate", "mean_latency_ms"):
            data[name] = getattr(self, name)
        data["p50_ms"], data["p95_ms"] = self.p50_ms, self.p95_ms
        return data


@dataclass
class Report:
    """A delivery report: one line per provider and channel, the total, top failure reasons."""

    since: datetime
    until: datetime
    provider: str | None
    lines: list[Line]
    total: Line
    #: Top failure reasons per provider (all channels), and under "*" over all providers.
    reasons: dict[str, list[ReasonCount]] = field(default_factory=dict)


def build_report(
    engine: Engine, since: datetime, until: datetime, provider: str | None = None, *, top: int = 5
) -> Report:
    """Compute a report from ``delivery_stats_hourly`` and ``failures_by_reason``.

    Args:
        engine: where the read models live.
        since: window start (naive means UTC); its hour / day is included whole.
        until: window end, exclusive.
        provider: only this provider; None for all.
        top: how many failure reasons to keep per provider.
    """
    since, until = _utc(since), _utc(until)
    lines = _lines(engine, since, until, provider, by="line")
    [(_, total)] = _lines(engine, since, until, provider, by="total")
    reasons = _reasons(engine, since, until, provider, top)
    return Report(since, until, provider, [line for _, line in lines], total, reasons)


def render(report: Report, fmt: str = "table") -> str:
    """The report as text: ``table`` (for people), ``json`` or ``csv`` (one row per line + total)."""
    if fmt == "json":
        data = {
            "since": report.since.isoformat(),
            "until": report.until.isoformat(),
            "provider": report.provider,
            "lines": [_jsonable(line.as_dict()) for line in report.lines],
            "total": _jsonable(report.total.as_dict()),
            "top_reasons": {k: [vars(r) for r in v] for k, v in report.reasons.items()},
        }
        return json.dumps(data, indent=2)
    if fmt == "csv":
        return _csv(report)
    if fmt == "table":
        return _table(report)
    raise ValueError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")


def draw_chart(
    engine: Engine, since: datetime, until: datetime, provider: str | None, path: str | Path
) -> Path:
    """Write a PNG: events per hour (delivered / backed off / failed) and p50 / p95 latency per hour.

    Raises:
        ChartUnavailableError: matplotlib is not installed.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ChartUnavailableError("matplotlib is not installed: pip install 'smeg[chart]'") from None
    series = _lines(engine, _utc(since), _utc(until), provider, by="hour")
    hours = [hour for hour, _ in series if hour is not None]
    delivered = [line.delivered for _, line in series]
    backed_off = [line.backed_off for _, line in series]
    failed = [line.failed for _, line in series]
    figure = Figure(figsize=(11, 7), layout="constrained")
    FigureCanvasAgg(figure)
    counts, latency = figure.subplots(2, 1, sharex=True)
    width, edge = timedelta(minutes=50), {"align": "edge"}
    counts.bar(hours, delivered, width, label="delivered", color="tab:green", **edge)
    counts.bar(hours, backed_off, width, bottom=delivered, label="backed off", color="tab:orange", **edge)
    stacked = [a + b for a, b in zip(delivered, backed_off, strict=True)]
    counts.bar(hours, failed, width, bottom=stacked, label="failed", color="tab:red", **edge)
    counts.set_ylabel("events per hour")
    counts.set_title(f"smeg deliveries per hour, provider: {provider or 'all'} (UTC)")
    counts.margins(y=0.2)
    counts.legend(loc="upper right", ncols=3)
    middles = [hour + timedelta(minutes=25) for hour in hours]
    overflow = LATENCY_BUCKETS[-2][1] / 1000
    for name, quantile in (("p50", 0.5), ("p95", 0.95)):
        values = [histogram_quantile(line.histogram, quantile) for _, line in series]
        latency.plot(middles, [_seconds(v) for v in values], marker="o", label=name)
        over = [(m, overflow) for m, v in zip(middles, values, strict=True) if v == math.inf]
        if over:
            latency.scatter(*zip(*over, strict=True), marker="^", color="black", zorder=3)
    if any(line.latency_count for _, line in series):
        latency.set_yscale("log")
        latency.legend(loc="best", title="▲ = over 1 h")
    else:
        counts.text(0.5, 0.5, "no data", transform=counts.transAxes, ha="center")
    latency.set_ylabel("received → delivered (s, bucket bound)")
    figure.savefig(path, format="png", dpi=100)
    return Path(path)


def _lines(
    engine: Engine, since: datetime, until: datetime, provider: str | None, *, by: str
) -> list[tuple[datetime | None, Line]]:
    """Summed rows of ``delivery_stats_hourly``, by ``line`` (provider, channel), ``hour`` or ``total``."""
    table = delivery_stats_hourly
    scalars = (*COUNTER_COLUMNS, "latency_sum_ms", "latency_count")
    keys = {"line": [table.c.provider, table.c.channel], "hour": [table.c.hour], "total": []}[by]
    first_hour = since.replace(minute=0, second=0, microsecond=0)
    where: list[ColumnElement[bool]] = [table.c.hour >= first_hour, table.c.hour < until]
    if provider is not None:
        where.append(table.c.provider == provider)
    sums = (func.sum(table.c[n]).label(n) for n in (*scalars, *HISTOGRAM_COLUMNS))
    with engine.connect() as connection:
        rows = connection.execute(select(*keys, *sums).where(*where).group_by(*keys).order_by(*keys)).all()
    result: list[tuple[datetime | None, Line]] = []
    for row in rows:
        line = Line(row.provider, row.channel) if by == "line" else Line("*", "*")
        for name in scalars:
            setattr(line, name, int(row._mapping[name] or 0))
        line.histogram = tuple(int(row._mapping[n] or 0) for n in HISTOGRAM_COLUMNS)
        result.append((_utc(row.hour) if by == "hour" else None, line))
    return result


def _reasons(
    engine: Engine, since: datetime, until: datetime, provider: str | None, top: int
) -> dict[str, list[ReasonCount]]:
    """The top reasons per provider, and under "*" over all providers."""
    table = failures_by_reason
    last_day = (until - timedelta(microseconds=1)).date()
    where: list[ColumnElement[bool]] = [table.c.day >= since.date(), table.c.day <= last_day]
    if provider is not None:
        where.append(table.c.provider == provider)
    sums = [func.sum(table.c[n]) for n in REASON_COUNTERS]
    found: dict[str, list[ReasonCount]] = {}
    with engine.connect() as connection:
        for keys in ([table.c.provider, table.c.reason], [table.c.reason]):
            for row in connection.execute(select(*keys, *sums).where(*where).group_by(*keys)):
                name = row[0] if len(keys) == 2 else "*"
                counts = (int(v or 0) for v in row[len(keys) :])
                found.setdefault(name, []).append(ReasonCount(row[len(keys) - 1], *counts))
    return {k: sorted(v, key=lambda r: (-r.failed, -r.backed_off, r.reason))[:top] for k, v in found.items()}


def _table(report: Report) -> str:
    rows = [["provider", "channel", "received", "attempts", "delivered", "failed p/e", "deliv%"]]
    rows[0] += ["retry%", "backoff%", "p50", "p95"]
    for line in [*report.lines, report.total]:
        rows.append(
            [_name(line.provider), _name(line.channel), str(line.received), str(line.attempts)]
            + [str(line.delivered), f"{line.failed_permanent}/{line.failed_exhausted}"]
            + [_percent(v) for v in (line.delivery_rate, line.retry_rate, line.backoff_rate)]
            + [_duration(line.p50_ms), _duration(line.p95_ms)]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    text = [f"Deliveries {report.since:%Y-%m-%d %H:%M} – {report.until:%Y-%m-%d %H:%M} UTC, provider: "]
    text[0] += report.provider or "all"
    text += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    text.append("Top failure reasons (failed / backed off):")
    for name, reasons in report.reasons.items():
        listed = ", ".join(f"{r.reason} {r.failed}/{r.backed_off}" for r in reasons) or "none"
        text.append(f"  {_name(name)}: {listed}")
    text.append("p50/p95: received → delivered, upper bound of the histogram bucket holding the quantile.")
    return "\n".join(text) + "\n"


def _csv(report: Report) -> str:
    columns = ["provider", "channel", *COUNTER_COLUMNS, "failed", "latency_count", "mean_latency_ms"]
    columns += ["delivery_rate", "retry_rate", "backoff_rate", "p50_ms", "p95_ms", "top_reasons"]
    out = io.StringIO()
    writer = csv.DictWriter(out, columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for line in [*report.lines, report.total]:
        reasons = report.reasons.get(line.provider, [])
        row = _jsonable(line.as_dict())
        row["top_reasons"] = ";".join(f"{r.reason}:{r.failed}:{r.backed_off}" for r in reasons)
        writer.writerow(row)
    return out.getvalue()


def _jsonable(data: dict[str, Any]) -> dict[str, Any]:
    return {k: "inf" if isinstance(v, float) and math.isinf(v) else v for k, v in data.items()}


def _ratio(part: float, whole: float) -> float | None:
    return part / whole if whole else None


def _name(value: str) -> str:
    return {"*": "all", "": "(none)"}.get(value, value)


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}"


def _duration(ms: float | None) -> str:
    if ms is None:
        return "-"
    for unit, size in (("h", 3_600_000), ("min", 60_000), ("s", 1_000)):
        if ms >= size:
            return ">1h" if math.isinf(ms) else f"{ms / size:g}{unit}"
    return f"{ms:g}ms"


def _seconds(ms: float | None) -> float:
    return math.nan if ms is None or math.isinf(ms) else ms / 1000


def _utc(value: datetime) -> datetime:
    return value.astimezone(timezone.utc) if value.tzinfo else value.replace(tzinfo=timezone.utc)
