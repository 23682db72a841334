"""Heartbeats of delivery processes in the read models' database, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine

from adapters.event_store import MessageStore
from adapters.process_registry import LIVE_WITHIN, ProcessRegistry

T0 = datetime(2026, 12, 7, 6, 0, tzinfo=UTC)


def test_live_processes_are_counted_and_stale_or_departed_ones_are_not(
    store_and_engine: tuple[MessageStore, Engine],
) -> None:
    _, engine = store_and_engine
    one, two = ProcessRegistry(engine), ProcessRegistry(engine)

    assert one.beat("host-a/1", T0) == 1
    assert two.beat("host-b/7", T0 + timedelta(seconds=1)) == 2
    assert one.beat("host-a/1", T0 + timedelta(seconds=5)) == 2  # a beat updates, not adds

    # host-b/7 falls silent (kill -9): counted out once it is older than LIVE_WITHIN
    later = T0 + timedelta(seconds=1) + LIVE_WITHIN + timedelta(seconds=1)
    assert one.beat("host-a/1", later) == 1

    # a clean stop gives the share back at once
    assert two.beat("host-b/8", later) == 2
    two.leave("host-b/8")
    assert one.beat("host-a/1", later) == 1


def test_the_count_is_never_below_one(store_and_engine: tuple[MessageStore, Engine]) -> None:
    _, engine = store_and_engine
    registry = ProcessRegistry(engine)
    registry.leave("nobody")
    assert registry.beat("me", T0) == 1
