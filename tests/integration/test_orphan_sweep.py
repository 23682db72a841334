"""Start-up adoption and the orphan sweep read every unfinished message, however many there are:
``unfinished`` pages through ``message_status`` in ``retry_at`` order (keyset), on SQLite and on
PostgreSQL, and the scheduler adopts all of them."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any
from uuid import UUID

import pykka
import pytest
from sqlalchemy import Engine, insert

from adapters.event_store import MessageStore
from adapters.projections import create_tables
from adapters.status_view import UnfinishedIndex, message_status, unfinished
from domain.message import BACKED_OFF, DELIVERED, FAILED, IN_FLIGHT, RECEIVED
from smeg_actors.actors.messages import DeliverMessages, GetPending, Tick
from smeg_actors.actors.scheduler import SchedulerActor
from smeg_actors.actors.supervisor import Children

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)
STALE_AFTER = 120.0
WAIT = 30.0


@pytest.fixture
def db(store_and_engine: tuple[MessageStore, Engine]) -> Iterator[tuple[MessageStore, Engine]]:
    store, engine = store_and_engine
    create_tables(engine)
    yield store, engine
    pykka.ActorRegistry.stop_all(timeout=WAIT)


def row(
    status: str, at: datetime, *, retry_at: datetime | None = None, key: UUID | None = None
) -> dict[str, Any]:
    """A ``message_status`` row as the projection writes it; ``at`` is when it was received and,
    unless received, attempted."""
    return {
        "id": key or uuid.uuid4(),
        "message_id": f"m-{uuid.uuid4().hex}",
        "channel": "sms",
        "status": status,
        "attempts": 0 if status == RECEIVED else 1,
        "last_provider": None,
        "last_error": None,
        "permanent": False,
        "correlation_id": "c",
        "received_at": at,
        "attempted_at": None if status == RECEIVED else at,
        "delivered_at": at if status == DELIVERED else None,
        "failed_at": at if status == FAILED else None,
        "retry_at": retry_at,
    }


def put(engine: Engine, rows: list[dict[str, Any]]) -> None:
    with engine.begin() as connection:
        connection.execute(insert(message_status), rows)


def due(r: dict[str, Any]) -> datetime:
    if r["status"] == BACKED_OFF:
        return r["retry_at"]  # type: ignore[no-any-return]
    if r["status"] == IN_FLIGHT:
        return r["attempted_at"] + timedelta(seconds=STALE_AFTER)  # type: ignore[no-any-return]
    return r["received_at"]  # type: ignore[no-any-return]


def a_mix(n: int) -> list[dict[str, Any]]:
    """Unfinished rows of every kind, ``n`` of each, backed-off ones sharing ``retry_at`` values
    (ties across page boundaries), received and in flight ones without one."""
    rows = []
    for i in range(n):
        rows.append(row(RECEIVED, T0 - timedelta(minutes=i)))
        rows.append(row(IN_FLIGHT, T0 - timedelta(minutes=10 + i)))
        rows.append(row(BACKED_OFF, T0 - timedelta(hours=1), retry_at=T0 + timedelta(seconds=i % 3)))
    return rows


def finished(n: int) -> list[dict[str, Any]]:
    return [row(DELIVERED if i % 2 else FAILED, T0 - timedelta(hours=2)) for i in range(n)]


# --- unfinished --------------------------------------------------------------------------------


def test_unfinished_reads_every_unfinished_row_once_in_pages_in_retry_at_order(
    db: tuple[MessageStore, Engine],
) -> None:
    # Given more unfinished rows than fit in a page, with ties and NULLs in retry_at
    _store, engine = db
    rows = a_mix(7)
    put(engine, rows + finished(5))
    # When
    pages = list(unfinished(engine, stale_after=STALE_AFTER, page_size=4))
    # Then every unfinished row comes once, with its due time, in pages of at most four
    found = [item for page in pages for item in page]
    assert sorted(found) == sorted((r["id"], due(r)) for r in rows)
    assert len(pages) == 6 and all(len(page) <= 4 for page in pages)
    # And in retry_at order: those without one first, ties broken by id
    in_order = sorted(rows, key=lambda r: (r["retry_at"] is not None, r["retry_at"] or T0, r["id"]))
    assert [key for key, _due in found] == [r["id"] for r in in_order]


def test_the_sweep_reads_every_overdue_row_in_pages_and_only_those(db: tuple[MessageStore, Engine]) -> None:
    # Given overdue and not yet overdue rows of every kind
    _store, engine = db
    before = T0 + timedelta(seconds=1)
    rows = a_mix(6)
    put(engine, rows + finished(3))
    overdue = [
        r
        for r in rows
        if (r["status"] == IN_FLIGHT and r["attempted_at"] < before - timedelta(seconds=STALE_AFTER))
        or (r["status"] != IN_FLIGHT and due(r) < before)
    ]
    assert 4 < len(overdue) < len(rows)
    # When
    pages = list(unfinished(engine, stale_after=STALE_AFTER, before=before, page_size=2))
    # Then
    assert sorted(item for page in pages for item in page) == sorted((r["id"], due(r)) for r in overdue)


def test_an_exactly_full_last_page_ends_the_walk(db: tuple[MessageStore, Engine]) -> None:
    _store, engine = db
    put(engine, a_mix(2))

    pages = list(unfinished(engine, stale_after=STALE_AFTER, page_size=3))

    assert [len(page) for page in pages] == [3, 3]


# --- the scheduler -----------------------------------------------------------------------------


class FakeDispatcher(pykka.ThreadingActor):
    def __init__(self) -> None:
        super().__init__()
        self.released: list[UUID] = []

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, DeliverMessages):
            self.released.extend(item.id for item in message.items)
        elif message == "released":
            return list(self.released)
        return None


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def scheduler(store: MessageStore, engine: Engine, clock: Clock, **options: Any) -> tuple[Any, Any]:
    children = Children()
    dispatcher = FakeDispatcher.start()
    children.set("dispatcher", dispatcher)
    ref = SchedulerActor.start(
        "scheduler",
        None,
        store=store,
        unfinished=UnfinishedIndex(engine),
        catch_up=lambda: 0,
        children=children,
        clock=clock,
        stale_after=STALE_AFTER,
        **options,
    )
    return ref, dispatcher


def test_the_scheduler_adopts_more_unfinished_messages_than_a_page_at_start_and_in_a_sweep(
    db: tuple[MessageStore, Engine],
) -> None:
    # Given unfinished messages filling several pages
    store, engine = db
    first = a_mix(5)
    put(engine, first + finished(4))
    clock = Clock(T0)
    # When the scheduler starts
    ref, dispatcher = scheduler(store, engine, clock, page_size=4, sweep_every=5.0, orphan_margin=30.0)
    # Then it adopted every one of them
    assert ref.ask(GetPending(), timeout=WAIT) == len(first)
    # And when a dead process leaves more behind, the next sweep adopts them all, with the
    # first ones again (released on the way, but still unfinished in the read model)
    orphans = [row(RECEIVED, T0 + timedelta(minutes=i)) for i in range(9)]
    put(engine, orphans)
    clock.now = T0 + timedelta(hours=2)
    ref.tell(Tick())  # releases the first ones, then sweeps
    assert ref.ask(GetPending(), timeout=WAIT) == len(first) + len(orphans)
    clock.now += timedelta(milliseconds=1)
    ref.tell(Tick())
    assert ref.ask(GetPending(), timeout=WAIT) == 0  # (the Tick is handled: its release is queued)
    released = dispatcher.ask("released", timeout=WAIT)
    assert sorted(released) == sorted([r["id"] for r in first] * 2 + [r["id"] for r in orphans])


def test_more_unfinished_messages_than_any_single_read_are_all_adopted_at_start(
    db: tuple[MessageStore, Engine],
) -> None:
    # Given more unfinished messages than the scheduler ever read at once (100,000 until
    # 2026-11), on the default page size
    store, engine = db
    count = 100_001
    put(engine, [row(RECEIVED, T0) for _ in range(count)])
    # When
    ref, _dispatcher = scheduler(store, engine, Clock(T0))
    # Then
    assert ref.ask(GetPending(), timeout=WAIT) == count
