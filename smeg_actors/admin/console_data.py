"""What the console's pages show, read through the same modules as the CLI and the admin API:
``runtime/fleet`` (failure groups), the read models (status counts, the report's numbers,
failures per provider and hour, the schedule), providers' health, alerts and flags.

The overview is best effort: a section whose source does not answer says so, and the others
are still shown.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from adapters.fleet_view import STATUSES
from adapters.schedule_view import oldest_backoff_due
from adapters.stats_queries import HOUR, event_sums, window
from adapters.status_view import status_counts
from domain.audit import describe, public_record
from domain.message import ARCHIVED, BACKED_OFF, DELIVERED, FAILED, HELD, IN_FLIGHT, RECEIVED
from domain.ports import StoreError
from domain.request import mask_address
from smeg_actors.cli.support import CommandError
from smeg_actors.cli.support import open_store as open_checked_store
from smeg_actors.runtime import fleet, ops_views
from smeg_actors.runtime.clock import utc_now
from smeg_actors.runtime.config import Settings
from smeg_actors.runtime.factory import open_store, read_models_engine

#: Statuses after which nothing happens to a message unless a person acts.
FINAL = frozenset({DELIVERED, FAILED, ARCHIVED})
UNFINISHED = (RECEIVED, IN_FLIGHT, BACKED_OFF, HELD)
#: The schedule page's windows.
WINDOWS = {
    "10m": timedelta(minutes=10),
    "1h": timedelta(hours=1),
    "6h": timedelta(hours=6),
    "24h": timedelta(hours=24),
}
HOURS = 24
#: What a section of the overview may meet when its source does not answer.
UNAVAILABLE = (StoreError, SQLAlchemyError, CommandError, OSError)


def overview(settings: Settings) -> dict[str, Any]:
    """Every section of the overview; a section that could not be read is in ``errors``."""
    now, errors = utc_now(), {}
    sections: dict[str, Callable[[], Any]] = {
        "numbers": lambda: _numbers(settings, now),
        "groups": lambda: fleet.failure_groups(settings),
        "providers": lambda: ops_views.provider_rows(settings, open_store=open_checked_store),
        "alerts": lambda: ops_views.alert_rows(settings, everything=False, open_store=open_checked_store),
        "flags": lambda: [row for row in flag_rows(settings) if row["by"] is not None],
    }
    found: dict[str, Any] = {}
    for name, read in sections.items():
        try:
            found[name] = read()
        except UNAVAILABLE as exc:
            errors[name] = f"{type(exc).__name__}: {exc}"[:300]
            found[name] = None
    return found | {"errors": errors, "now": fleet.iso(now)}


def _numbers(settings: Settings, now: datetime) -> dict[str, Any]:
    from smeg_actors.cli.report_data import build_report

    engine = read_models_engine(settings)
    try:
        counts = status_counts(engine)
        report = build_report(engine, now - timedelta(hours=HOURS), now)
        hours, failures = failures_by_hour(engine, now)
        due = oldest_backoff_due(engine)
    finally:
        engine.dispose()
    return {
        "counts": {status: counts.get(status, 0) for status in STATUSES},
        "backlog": sum(counts.get(status, 0) for status in UNFINISHED),
        "overdue": max(0, round((now - due).total_seconds())) if due is not None and due < now else None,
        "report": report,
        "hours": [f"{hour:%H}" for hour in hours],
        "failures": failures,
    }


def failures_by_hour(
    engine: Engine, now: datetime
) -> tuple[list[datetime], dict[str, list[tuple[int, int]]]]:
    """The last ``HOURS`` hours (UTC) and, per provider, (failed, heat 0-4) in each: ``Failed``
    events (permanent or exhausted) in that hour, as the reports count them
    (``adapters.stats_queries``, per hour)."""
    first = (now - timedelta(hours=HOURS - 1)).replace(minute=0, second=0, microsecond=0)
    span = window(first, first + timedelta(hours=HOURS), HOUR)
    hours = span.starts()
    slot = {hour: n for n, hour in enumerate(hours)}
    counts: dict[str, list[int]] = {}
    for (hour, provider), sums in event_sums(engine, span, None, "bin_provider").items():
        failed, at = sums["failed_permanent"] + sums["failed_exhausted"], slot.get(hour)
        if failed and at is not None:
            counts.setdefault(provider or "(no provider yet)", [0] * HOURS)[at] += failed
    most = max((max(row) for row in counts.values()), default=0)
    return hours, {
        name: [(n, math.ceil(4 * n / most) if n else 0) for n in row] for name, row in sorted(counts.items())
    }


def timeline(settings: Settings, message_id: str, *, pii: bool) -> dict[str, Any]:
    """One message and its events as ``smeg history`` tells them (MessageNotFoundError if none):
    the address masked and the body left out unless ``pii``."""
    store = open_store(settings)
    try:
        message = store.get_by_message_id(message_id)
        records = [public_record(event) for event in store.history(message.id)]
    finally:
        store.close()
    return {
        "message_id": message_id,
        "status": message.status,
        "final": message.status in FINAL,
        "channel": message.channel,
        "provider": message.last_provider,
        "attempts": message.attempts,
        "last_error": message.last_error,
        "retry_at": fleet.iso(message.retry_at),
        "to": message.to if pii else mask_address(message.to),
        "body": message.body if pii else None,
        "events": [(r["timestamp"], r["version"], r["type"], _detail(r)) for r in records],
    }


def _detail(record: dict[str, Any]) -> str:
    """``describe``'s line without the time, version and type the table shows in columns."""
    line = describe(record)
    head = f"{record['timestamp']}  v{record['version']:<3} {record['type']:<14}"
    return line[len(head) :].strip() if line.startswith(head) else line


def schedule(settings: Settings, within: timedelta, provider: str | None) -> dict[str, Any]:
    """``smeg schedule --json``'s object: ``due``, ``held``, ``oldest_held``."""
    return ops_views.schedule_record(
        ops_views.read_schedule(settings, within, provider, open_store=open_checked_store)
    )


def flag_rows(settings: Settings) -> list[dict[str, Any]]:
    """``smeg flags --json``'s rows, each with what the flag does (``meaning``)."""
    from domain.flags import KNOWN

    rows = ops_views.flag_rows(ops_views.read_flags(settings))
    return [row | {"meaning": KNOWN[row["name"]].meaning} for row in rows]


def set_flag(settings: Settings, name: str, text: str, *, by: str, reason: str, lasting: str | None) -> None:
    """Set a flag as ``smeg flags set`` does, recorded with ``by`` (ValueError: an unknown flag, a
    bad value or duration; ConflictError: other writers kept changing the flags)."""
    from domain.flags import parse_duration, spec_of

    value = spec_of(name).parse(text)
    now = utc_now()
    until = now + parse_duration(lasting) if lasting else None
    store = open_store(settings)
    try:
        ops_views.set_flag(store, name, value, by=by, reason=reason, now=now, until=until)
    finally:
        store.close()


# Filters of the pages' templates.


def percent(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f} %"


def milliseconds(value: float | None) -> str:
    if value is None:
        return "—"
    if math.isinf(value):
        return "> 1 h"
    return f"{value:.0f} ms" if value < 1000 else f"{value / 1000:g} s"


def when(value: datetime | str | None) -> str:
    """A moment as ``2025-01-31 14:05:09`` (UTC)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value.replace("T", " ").removesuffix("Z").split(".")[0].split("+")[0]
    return f"{value.astimezone(timezone.utc):%Y-%m-%d %H:%M:%S}"
