"""ProviderHealth in the event store's own log, on SQLite and PostgreSQL: transitions round-trip,
one writer wins each transition, and the messages' followers of the log never see them."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import func, select

from adapters.event_store import MessageStore
from adapters.parked_events import parked_events
from adapters.provider_health_store import ProviderHealthStore
from adapters.sql import make_engine, read_models_beside
from adapters.status_view import message_status
from domain.circuit import CLOSED, OPEN, CircuitPolicy
from domain.errors import CircuitAlreadyOpenError
from domain.message import Message
from domain.ports import Change
from domain.provider_health import ProviderHealth
from smeg_actors.runtime.read_models import ReadModelSet, runners
from tests.integration.backends import Backend

T0 = datetime(2026, 12, 7, 12, 0, tzinfo=timezone.utc)
POLICY = CircuitPolicy()


def open_circuit(by: str) -> Any:
    def apply(health: ProviderHealth) -> None:
        health.open_circuit(
            reason="12 of 20 attempts failed",
            failure_ratio=0.6,
            window=30,
            opened_by=by,
            policy=POLICY,
            now=T0,
        )

    return apply


def test_a_transition_round_trips_and_its_history_says_who(store: MessageStore) -> None:
    health = ProviderHealthStore(store)
    assert health.get("a") is None
    health.change("a", open_circuit("pid 1"), now=T0)
    loaded = health.get("a")
    assert loaded is not None and loaded.state == OPEN and loaded.open_until == T0 + timedelta(seconds=30)
    health.change("a", lambda h: h.disable(by="alice", reason="incident 42", now=T0), now=T0)
    events = store.history(ProviderHealth.create_id("a"))
    assert [type(e).__name__ for e in events] == ["Registered", "CircuitOpened", "ProviderDisabled"]
    assert events[1].opened_by == "pid 1" and events[2].by == "alice"
    assert health.get("b") is None  # one aggregate per provider


def test_of_two_processes_opening_at_once_exactly_one_writes_it(backend: Backend) -> None:
    stores = [ProviderHealthStore(backend.open()) for _ in range(2)]
    stores[0].change("a", lambda h: None, now=T0)  # registered: both now load version 1
    both_loaded = threading.Barrier(2, timeout=10)
    errors: list[BaseException] = []

    def race(store: ProviderHealthStore, who: str) -> None:
        first = [True]

        def apply(health: ProviderHealth) -> None:
            if first[0]:
                first[0] = False
                both_loaded.wait()  # each decided on the same closed circuit
            open_circuit(who)(health)

        try:
            store.change("a", apply, now=T0)
        except CircuitAlreadyOpenError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=race, args=(s, f"pid {i}")) for i, s in enumerate(stores)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads)
    history = backend.open().history(ProviderHealth.create_id("a"))
    assert [type(e).__name__ for e in history] == ["Registered", "CircuitOpened"]
    assert len(errors) == 1  # the loser reloaded, saw it open, and wrote nothing


def test_the_messages_followers_of_the_log_skip_health_events(backend: Backend) -> None:
    store = backend.open()
    health = ProviderHealthStore(store)
    for i in range(6):
        message = Message.receive(
            message_id=f"m{i}", channel="sms", to="+441234560123", body="hi", correlation_id="c", now=T0
        )
        assert store.commit([Change(load=lambda m=message: m, cached=message)])[0].saved
        health.change("a", open_circuit("p") if i % 2 == 0 else _closed_again, now=T0 + timedelta(hours=i))
    entries, end = store.read_events(0, 1000)
    assert end == store.max_position() and len(entries) == 6
    assert all(isinstance(event, Message.Received) for _, event in entries)
    url = backend.url
    engine = make_engine(read_models_beside(url) if backend.name == "sqlite" else url, schema=backend.schema)
    try:
        read_models = ReadModelSet(store, runners(store, engine))
        read_models.catch_up()
        assert set(read_models.positions().values()) == {end}
        with engine.connect() as connection:
            assert connection.scalar(select(func.count()).select_from(message_status)) == 6
            assert connection.scalar(select(func.count()).select_from(parked_events)) == 0
    finally:
        engine.dispose()
    last = health.get("a")
    assert last is not None and last.circuit == CLOSED


def _closed_again(health: ProviderHealth) -> None:
    assert health.open_until is not None
    health.half_open(now=health.open_until)
    health.close_circuit(probe_latency_ms=5.0, now=health.open_until)
