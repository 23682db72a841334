"""``read_schedule`` on a SQLite file and on PostgreSQL: due counts per minute and provider,
held counts, the oldest held message, the provider filter, and the window's edges."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any
from uuid import uuid4

import pytest
from sqlalchemy import Engine, event, inspect

from adapters.schedule_view import DueCount, OldestHeld, Schedule, read_schedule
from adapters.sql import make_engine, translated_schema
from adapters.status_view import message_status
from adapters.tracking import create_tables
from domain.message import BACKED_OFF, DELIVERED, FAILED, HELD, IN_FLIGHT, RECEIVED

UTC = timezone.utc
NOW = datetime(2026, 12, 7, 6, 0, 30, tzinfo=UTC)
TEN_MINUTES = timedelta(minutes=10)
EMPTY = Schedule(due=[], held={}, oldest_held=None)


def minute(hh_mm: str) -> datetime:
    """A minute of NOW's day, e.g. ``minute("06:01")``."""
    hours, minutes = hh_mm.split(":")
    return NOW.replace(hour=int(hours), minute=int(minutes), second=0, microsecond=0)


def at(hh_mm_ss: str) -> datetime:
    hours, minutes, seconds = (float(part) for part in hh_mm_ss.split(":"))
    whole = int(seconds)
    return NOW.replace(
        hour=int(hours), minute=int(minutes), second=whole, microsecond=round((seconds - whole) * 1e6)
    )


def row(
    message_id: str,
    status: str,
    *,
    provider: str | None = None,
    retry_at: datetime | None = None,
    received_at: datetime = NOW - timedelta(hours=1),
) -> dict[str, Any]:
    """One ``message_status`` row, as the projection would write it."""
    attempted = status not in (RECEIVED, HELD) or provider is not None
    return {
        "id": uuid4(),
        "message_id": message_id,
        "channel": "sms",
        "status": status,
        "attempts": 1 if attempted else 0,
        "last_provider": provider,
        "last_error": None,
        "permanent": False,
        "correlation_id": f"c-{message_id}",
        "received_at": received_at,
        "attempted_at": received_at if attempted else None,
        "delivered_at": None,
        "failed_at": None,
        "retry_at": retry_at,
    }


@pytest.fixture(params=["sqlite", "postgres"])
def engine(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Engine]:
    """The read models' engine on a SQLite file, or on a PostgreSQL schema of the test's own."""
    if request.param == "sqlite":
        engine = make_engine(f"sqlite:///{tmp_path}/smeg.read.db")
    else:
        url, schema = request.getfixturevalue("pg_schema")
        engine = make_engine(url, schema=schema)
    yield engine
    engine.dispose()


def seed(engine: Engine, *rows: dict[str, Any]) -> None:
    create_tables(engine)
    if rows:
        with engine.begin() as connection:
            connection.execute(message_status.insert(), list(rows))


def schedule(engine: Engine, *, within: timedelta = TEN_MINUTES, provider: str | None = None) -> Schedule:
    return read_schedule(engine, now=NOW, within=within, provider=provider)


def test_before_the_read_model_exists_nothing_is_due_and_nothing_is_created(engine: Engine) -> None:
    assert schedule(engine) == EMPTY
    with engine.connect() as connection:
        schema = translated_schema(connection, message_status)
        assert not inspect(connection).has_table(message_status.name, schema=schema)


def test_an_empty_read_model_has_nothing_due_and_nothing_held(engine: Engine) -> None:
    seed(engine)
    assert schedule(engine) == EMPTY


def test_due_counts_per_minute_and_provider_with_received_and_overdue_in_the_current_minute(
    engine: Engine,
) -> None:
    seed(
        engine,
        row("new-1", RECEIVED),
        row("new-2", RECEIVED),
        row("retried", RECEIVED, provider="sms-eu"),  # a Failed message retried keeps its provider
        row("overdue", BACKED_OFF, provider="sms-eu", retry_at=at("05:50:00")),
        row("this-minute", BACKED_OFF, provider="sms-eu", retry_at=at("06:00:45")),
        row("next-minute", BACKED_OFF, provider="sms-eu", retry_at=at("06:01:00")),
        row("end-of-next", BACKED_OFF, provider="twilio", retry_at=at("06:01:59.999999")),
        row("held-soon", HELD, provider="twilio", retry_at=at("06:03:10")),
        row("last-in", BACKED_OFF, provider="sms-eu", retry_at=at("06:10:29.999")),
        row("at-horizon", BACKED_OFF, provider="sms-eu", retry_at=NOW + TEN_MINUTES),
        row("later", BACKED_OFF, provider="sms-eu", retry_at=at("07:00:00")),
        row("flying", IN_FLIGHT, provider="sms-eu"),
        row("done", DELIVERED, provider="sms-eu"),
        row("gone", FAILED, provider="sms-eu"),
    )
    assert schedule(engine).due == [
        DueCount(minute("06:00"), None, 2),
        DueCount(minute("06:00"), "sms-eu", 3),
        DueCount(minute("06:01"), "sms-eu", 1),
        DueCount(minute("06:01"), "twilio", 1),
        DueCount(minute("06:03"), "twilio", 1),
        DueCount(minute("06:10"), "sms-eu", 1),
    ]


def test_a_wider_window_reaches_further(engine: Engine) -> None:
    seed(
        engine,
        row("soon", BACKED_OFF, provider="sms-eu", retry_at=at("06:05:00")),
        row("later", BACKED_OFF, provider="sms-eu", retry_at=at("07:00:00")),
    )
    assert [item.minute for item in schedule(engine, within=timedelta(seconds=30)).due] == []
    assert [item.minute for item in schedule(engine, within=timedelta(hours=2)).due] == [
        minute("06:05"),
        minute("07:00"),
    ]


def test_held_counts_every_held_message_and_the_oldest_is_the_first_received(engine: Engine) -> None:
    seed(
        engine,
        row("held-far", HELD, provider="sms-eu", retry_at=at("09:00:00"), received_at=at("05:00:00")),
        row("held-eu", HELD, provider="sms-eu", retry_at=at("06:02:00"), received_at=at("05:30:00")),
        row("held-tw", HELD, provider="twilio", retry_at=at("05:59:00"), received_at=at("05:45:00.5")),
        row("backing", BACKED_OFF, provider="twilio", retry_at=at("06:02:00"), received_at=at("04:00:00")),
    )
    found = schedule(engine)
    assert found.held == {"sms-eu": 2, "twilio": 1}
    assert found.oldest_held == OldestHeld("held-far", at("05:00:00"))
    assert found.due == [
        DueCount(minute("06:00"), "twilio", 1),  # held past its look: overdue
        DueCount(minute("06:02"), "sms-eu", 1),
        DueCount(minute("06:02"), "twilio", 1),
    ]


def test_the_provider_filter_applies_to_due_held_and_the_oldest(engine: Engine) -> None:
    seed(
        engine,
        row("new", RECEIVED),
        row("eu-1", BACKED_OFF, provider="sms-eu", retry_at=at("06:04:00")),
        row("eu-held", HELD, provider="sms-eu", retry_at=at("06:04:30"), received_at=at("05:40:00")),
        row("tw-held", HELD, provider="twilio", retry_at=at("06:01:00"), received_at=at("05:10:00")),
    )
    found = schedule(engine, provider="sms-eu")
    assert found == Schedule(
        due=[DueCount(minute("06:04"), "sms-eu", 2)],
        held={"sms-eu": 1},
        oldest_held=OldestHeld("eu-held", at("05:40:00")),
    )
    assert schedule(engine, provider="nope") == EMPTY


def test_a_postgresql_session_in_another_time_zone_changes_nothing(pg_schema: tuple[str, str]) -> None:
    url, schema = pg_schema
    engine = make_engine(url, schema=schema)
    event.listen(engine, "connect", _kathmandu)
    try:
        _check_kathmandu(engine)
    finally:
        engine.dispose()


def _check_kathmandu(engine: Engine) -> None:
    seed(
        engine,
        row("eu", BACKED_OFF, provider="sms-eu", retry_at=at("06:07:59")),
        row("held", HELD, provider="sms-eu", retry_at=at("06:09:00"), received_at=at("05:10:00.25")),
    )
    found = schedule(engine)
    assert found.due == [DueCount(minute("06:07"), "sms-eu", 1), DueCount(minute("06:09"), "sms-eu", 1)]
    assert found.oldest_held == OldestHeld("held", at("05:10:00.25"))
    assert found.oldest_held is not None and found.oldest_held.since.utcoffset() == timedelta(0)


def _kathmandu(dbapi_connection: Any, _record: Any) -> None:
    """UTC+05:45: local times taken for UTC would be 5 h 45 min off."""
    dbapi_connection.execute("SET TIME ZONE 'Asia/Kathmandu'")
    dbapi_connection.commit()


def test_many_messages_in_one_minute_come_back_as_one_count(engine: Engine) -> None:
    rows = [
        row(f"m-{n}", BACKED_OFF, provider="sms-eu", retry_at=at("06:05:00") + timedelta(milliseconds=n))
        for n in range(500)
    ]
    seed(engine, *rows)
    assert schedule(engine).due == [DueCount(minute("06:05"), "sms-eu", 500)]
