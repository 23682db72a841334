"""``smeg report``'s output: a delivery report (``report_data``) as text for people, JSON or CSV,
and its chart (``report_chart``). The table explains every column in a legend below it.

The numbers: ``smeg_actors.cli.report_data`` (for the console too); the bins and windows:
``adapters.stats_queries``. JSON keys only ever grow: ``lines`` / ``total`` keep every counter
and rate they had, and gain ``messages``; the top level gains ``window`` and ``top_reasons_days``.
"""

from __future__ import annotations

import csv
import io
import json
import math
from datetime import datetime
from typing import Any

from adapters.stats_queries import Window
from adapters.stats_view import COUNTER_COLUMNS
from smeg_actors.cli.report_chart import ChartUnavailableError, draw_chart
from smeg_actors.cli.report_data import (
    Line,
    Outcomes,
    ReasonCount,
    Report,
    build_report,
    histogram_quantile,
)

__all__ = [
    "FORMATS",
    "ChartUnavailableError",
    "Line",
    "Outcomes",
    "ReasonCount",
    "Report",
    "build_report",
    "draw_chart",
    "histogram_quantile",
    "render",
]

FORMATS = ("table", "json", "csv")

#: The headings of the two tables.
MESSAGES_HEADING = "Messages received in the window, each counted once, by where it stands now:"
EVENTS_HEADING = "What happened in the window (events, whenever their message was received):"
#: One line per column, shown under the tables.
LEGEND = (
    ("received", "messages whose send request arrived in the window, each under the provider of"),
    ("", "its latest attempt (before one: held for, or asked for; '(no provider yet)' if neither)"),
    ("delivered", "of those, delivered by now (messages table); deliveries made in the window (events)"),
    ("after retry", "of the delivered, those that needed more than one attempt"),
    ("refused", "of those, failed for good: the provider refused it (a permanent error)"),
    ("gave up", "of those, failed when its attempts ran out, each a transient error (redrive may retry it)"),
    ("pending", "of those, not finished yet: in flight, waiting for its next attempt, or held"),
    ("attempts", "attempts made in the window, retries included"),
    ("backed off", "attempts that met a transient error, after which another one was scheduled"),
    ("failed", "failures in the window: refused or gave up (JSON: failed_permanent, failed_exhausted)"),
    (
        "delivered %",
        "delivered / (delivered + failed): the share of the window's outcomes that were deliveries",
    ),
    ("retried %", "of the window's deliveries, those that needed more than one attempt"),
    ("backoff %", "backed off / attempts"),
    ("p50, p95", "received → delivered time within which half / 95 % of the window's deliveries"),
    ("", "arrived: the upper bound of its histogram bucket (100 ms, 250 ms, 500 ms, 1 s, … 1 h)"),
)


def render(report: Report, fmt: str = "table") -> str:
    """The report as text: ``table`` (for people), ``json`` or ``csv`` (one row per line + total)."""
    if fmt == "json":
        return json.dumps(_json(report), indent=2)
    if fmt == "csv":
        return _csv(report)
    if fmt == "table":
        return _table(report)
    raise ValueError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")


def _json(report: Report) -> dict[str, Any]:
    data: dict[str, Any] = {
        "since": report.since.isoformat(),
        "until": report.until.isoformat(),
        "provider": report.provider,
        "lines": [_jsonable(line.as_dict()) for line in report.lines],
        "total": _jsonable(report.total.as_dict()),
        "top_reasons": {k: [vars(r) for r in v] for k, v in report.reasons.items()},
    }
    if report.window is not None:
        data["window"] = _window_json(report.window)
    if report.reason_days is not None:
        first, last = report.reason_days
        data["top_reasons_days"] = {"first": first.isoformat(), "last": last.isoformat()}
    return data


def _window_json(span: Window) -> dict[str, Any]:
    return {
        "since": span.since.isoformat(),
        "until": span.until.isoformat(),
        "bin": span.bin_name,
        "bin_seconds": int(span.bin.total_seconds()),
        "rounded": span.rounded,
        "asked_since": span.asked_since.isoformat(),
        "asked_until": span.asked_until.isoformat(),
    }


def _table(report: Report) -> str:
    lines = [*report.lines, report.total]
    text = [f"Delivery report, provider: {report.provider or 'all'}", _window_line(report), ""]
    text += [MESSAGES_HEADING, *_aligned(_messages_rows(lines)), ""]
    text += [EVENTS_HEADING, *_aligned(_events_rows(lines)), ""]
    text += _reason_lines(report)
    width = max(len(name) for name, _ in LEGEND)
    text += ["", "Columns:", *(f"  {name:<{width}}  {meaning}" for name, meaning in LEGEND)]
    return "\n".join(text) + "\n"


def _window_line(report: Report) -> str:
    span = report.window
    if span is None:
        return f"Window: {_range(report.since, report.until)} UTC"
    line = f"Window: {_range(span.since, span.until)} UTC, in one-{span.bin_name} bins"
    if span.rounded:
        same_day = span.asked_since.date() == span.since.date()
        asked = _range(span.asked_since, span.asked_until, seconds=True, day=not same_day)
        line += f" (asked for {asked}: rounded out to whole {span.bin_name}s)"
    return line


def _messages_rows(lines: list[Line]) -> list[list[str]]:
    rows = [["provider", "channel", "received", "delivered", "after retry", "refused", "gave up", "pending"]]
    for line in lines:
        m = line.messages
        if m.received or line is lines[-1]:
            counts = (
                m.received,
                m.delivered,
                m.delivered_after_retry,
                m.failed_permanent,
                m.failed_exhausted,
            )
            rows.append([_name(line.provider), _name(line.channel), *map(str, (*counts, m.pending))])
    return rows


def _events_rows(lines: list[Line]) -> list[list[str]]:
    rows = [["provider", "channel", "attempts", "backed off", "delivered", "failed"]]
    rows[0] += ["delivered %", "retried %", "backoff %", "p50", "p95"]
    for line in lines:
        if line.attempts or line.delivered or line.failed or line.backed_off or line is lines[-1]:
            counts = (line.attempts, line.backed_off, line.delivered, line.failed)
            rows.append(
                [_name(line.provider), _name(line.channel), *map(str, counts)]
                + [_percent(v) for v in (line.delivery_rate, line.retry_rate, line.backoff_rate)]
                + [_duration(line.p50_ms), _duration(line.p95_ms)]
            )
    return rows


def _aligned(rows: list[list[str]]) -> list[str]:
    """Columns two spaces apart: names left-aligned, numbers right-aligned."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    out = []
    for row in rows:
        cells = [
            cell.ljust(w) if i < 2 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        out.append(("  " + "  ".join(cells)).rstrip())
    return out


def _reason_lines(report: Report) -> list[str]:
    days = ""
    if report.reason_days is not None:
        first, last = report.reason_days
        days = f" on {first}" if first == last else f" from {first} to {last}"
    text = [f"Top failure reasons{days} (UTC; whole days: reasons are counted per day):"]
    rows = [["provider", "reason", "failed", "backed off"]]
    for name, reasons in report.reasons.items():
        if name != "*" or len(report.reasons) > 2:  # "all" repeats a single provider's
            rows += [[_name(name), r.reason, str(r.failed), str(r.backed_off)] for r in reasons]
    return text + (_aligned(rows) if len(rows) > 1 else ["  none"])


def _csv(report: Report) -> str:
    columns = ["provider", "channel", *COUNTER_COLUMNS, "failed", "latency_count", "mean_latency_ms"]
    columns += ["delivery_rate", "retry_rate", "backoff_rate", "p50_ms", "p95_ms", "top_reasons"]
    columns += [f"messages_{name}" for name in Outcomes().as_dict()]
    out = io.StringIO()
    writer = csv.DictWriter(out, columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for line in [*report.lines, report.total]:
        reasons = report.reasons.get(line.provider, [])
        row = _jsonable(line.as_dict())
        row["top_reasons"] = ";".join(f"{r.reason}:{r.failed}:{r.backed_off}" for r in reasons)
        row |= {f"messages_{name}": value for name, value in line.messages.as_dict().items()}
        writer.writerow(row)
    return out.getvalue()


def _jsonable(data: dict[str, Any]) -> dict[str, Any]:
    return {k: "inf" if isinstance(v, float) and math.isinf(v) else v for k, v in data.items()}


def _name(value: str) -> str:
    return {"*": "all", "": "(no provider yet)"}.get(value, value)


def _range(start: datetime, end: datetime, *, seconds: bool = False, day: bool = True) -> str:
    """``2024-06-01 10:30 – 10:45`` (without the start's date unless ``day``); the end's date
    too when it is another day."""
    time = "%H:%M:%S" if seconds else "%H:%M"
    start_format = f"%Y-%m-%d {time}" if day else time
    end_format = time if start.date() == end.date() else f"%Y-%m-%d {time}"
    return f"{start.strftime(start_format)} – {end.strftime(end_format)}"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}"


def _duration(ms: float | None) -> str:
    if ms is None:
        return "-"
    for unit, size in (("h", 3_600_000), ("min", 60_000), ("s", 1_000)):
        if ms >= size:
            return ">1h" if math.isinf(ms) else f"{ms / size:g}{unit}"
    return f"{ms:g}ms"
