"""The deployment's flags in the event store's own log, on SQLite and PostgreSQL: a setting
round-trips, two writers at once both land (optimistic concurrency, then a reload: G1), a
refused setting writes nothing, and the messages' followers of the log never see flags."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
from sqlalchemy import func, select

from adapters.event_store import MessageStore
from adapters.flag_store import FlagStore
from adapters.memory_broker import MemoryIntake
from adapters.parked_events import parked_events
from adapters.sql import make_engine, read_models_beside
from adapters.status_view import message_status
from domain.flags import DELIVERY_PAUSED, REDRIVE_AUTO, Flags, paused_flag
from domain.message import Message
from domain.ports import Change, StoreUnavailableError
from smeg_actors.runtime.bootstrap import build_runtime, memory_broker
from smeg_actors.runtime.config import Settings
from smeg_actors.runtime.read_models import ReadModelSet, runners
from tests.fakes import FakeProvider
from tests.integration.backends import Backend
from tests.waiting import wait_until

T0 = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


def setting(name: str, value: bool, by: str, **options: Any) -> Any:
    def apply(flags: Flags) -> None:
        flags.set(name, value, by=by, reason="incident 42", now=T0, **options)

    return apply


def test_a_setting_round_trips_with_who_why_and_expiry(store: MessageStore) -> None:
    flags = FlagStore(store)
    assert flags.get() is None
    until = T0 + timedelta(minutes=30)
    flags.change(setting(DELIVERY_PAUSED, True, "cli:alice", expires_at=until), now=T0)
    flags.change(setting(REDRIVE_AUTO, False, "cli:bob"), now=T0)
    loaded = flags.get()
    assert loaded is not None
    assert loaded.value_at(DELIVERY_PAUSED, T0) is True and loaded.value_at(DELIVERY_PAUSED, until) is False
    entry = loaded.current(DELIVERY_PAUSED, T0)
    assert entry is not None and (entry.by, entry.reason, entry.expires_at) == (
        "cli:alice",
        "incident 42",
        until,
    )
    assert loaded.value_at(REDRIVE_AUTO, T0) is False
    events = store.history(Flags.create_id())
    assert [type(e).__name__ for e in events] == ["Started", "FlagSet", "FlagSet"]


@pytest.mark.parametrize("started", [True, False], ids=["on-started-flags", "on-first-setting"])
def test_two_writers_at_once_both_land_the_second_on_what_the_first_wrote(
    backend: Backend, started: bool
) -> None:
    # Given two processes' stores; both load the same version before either saves
    stores = [FlagStore(backend.open()) for _ in range(2)]
    if started:
        stores[0].change(lambda flags: None, now=T0)
    both_loaded = threading.Barrier(2, timeout=10)
    tries: dict[str, int] = {}
    errors: list[BaseException] = []
    results: dict[str, Flags] = {}

    def write(store: FlagStore, name: str, by: str) -> None:
        def apply(flags: Flags) -> None:
            tries[by] = tries.get(by, 0) + 1
            if tries[by] == 1:
                both_loaded.wait()
            flags.set(name, True, by=by, reason="incident 42", now=T0)

        try:
            results[by] = store.change(apply, now=T0)
        except BaseException as exc:
            errors.append(exc)

    # When they set two flags at once
    threads = [
        threading.Thread(target=write, args=(stores[0], paused_flag("sms"), "cli:alice")),
        threading.Thread(target=write, args=(stores[1], paused_flag("im"), "cli:bob")),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    # Then neither setting is lost: the loser reloaded and applied its change again
    assert not errors and not any(thread.is_alive() for thread in threads)
    assert sorted(tries.values()) == [1, 2]
    history = backend.open().history(Flags.create_id())
    assert [type(e).__name__ for e in history] == ["Started", "FlagSet", "FlagSet"]
    assert [e.originator_version for e in history] == [1, 2, 3]
    # and each writer got the flags as stored: the loser decided again on the winner's write
    [loser] = [by for by, count in tries.items() if count == 2]
    for flags in (stores[0].get(), results[loser]):
        assert flags is not None and flags.version == 3
        assert flags.value_at("delivery.paused.sms", T0) and flags.value_at("delivery.paused.im", T0)


def test_a_setting_the_flags_refuse_writes_nothing(store: MessageStore) -> None:
    flags = FlagStore(store)
    flags.change(setting(DELIVERY_PAUSED, True, "cli:alice"), now=T0)
    with pytest.raises(ValueError, match="unknown flag"):
        flags.change(setting("delivery.paused.fax", True, "cli:alice"), now=T0)
    assert len(store.history(Flags.create_id())) == 2


def test_a_store_that_cannot_be_read_is_a_store_unavailable_error(backend: Backend) -> None:
    flags = FlagStore(backend.open())
    flags.change(setting(DELIVERY_PAUSED, True, "cli:alice"), now=T0)
    backend.break_inserts()
    try:
        with pytest.raises(StoreUnavailableError):
            flags.change(setting(DELIVERY_PAUSED, False, "cli:bob"), now=T0)
    finally:
        backend.heal_inserts()
    loaded = flags.get()
    assert loaded is not None and loaded.value_at(DELIVERY_PAUSED, T0) is True


def test_the_messages_followers_of_the_log_skip_flags(backend: Backend) -> None:
    store = backend.open()
    flags = FlagStore(store)
    for i in range(4):
        message = Message.receive(
            message_id=f"m{i}", channel="sms", to="+441234560123", body="hi", correlation_id="c", now=T0
        )
        assert store.commit([Change(load=lambda m=message: m, cached=message)])[0].saved
        flags.change(setting(DELIVERY_PAUSED, i % 2 == 0, f"cli:{i}"), now=T0)
    entries, end = store.read_events(0, 1000)
    assert end == store.max_position() and len(entries) == 4
    assert all(isinstance(event, Message.Received) for _, event in entries)
    url = backend.url
    engine = make_engine(read_models_beside(url) if backend.name == "sqlite" else url, schema=backend.schema)
    try:
        read_models = ReadModelSet(store, runners(store, engine))
        read_models.catch_up()
        assert set(read_models.positions().values()) == {end}
        with engine.connect() as connection:
            assert connection.scalar(select(func.count()).select_from(message_status)) == 4
            assert connection.scalar(select(func.count()).select_from(parked_events)) == 0
    finally:
        engine.dispose()


def test_an_in_process_pipeline_takes_nothing_while_paused_and_delivers_all_on_resume(
    database: tuple[str, str],
) -> None:
    """The whole wiring on the in-memory broker (the demo's), on both stores: the intake holds,
    the flags actor sees the switch in about a second either way."""
    # Given a running pipeline, paused before anything is published
    url, schema = database
    settings = Settings(database_url=url, database_schema=schema, workers=2, projector="inline")
    store = MessageStore(url, schema=schema)
    provider = FakeProvider()
    broker = memory_broker(known_providers={provider.name})
    runtime = build_runtime(settings, store=store, providers={provider.name: provider}, broker=broker)
    intake = cast(MemoryIntake, broker.intake)
    flags = FlagStore(store)
    now = datetime.now(UTC)
    flags.change(lambda f: f.set(DELIVERY_PAUSED, True, by="test", reason="incident 42", now=now), now=now)
    runtime.start()
    try:
        assert runtime.flags.delivery_paused() and runtime.hold_intake()  # read before consuming
        # When requests come
        ids = [f"mem-{i}" for i in range(10)]
        for message_id in ids:
            body = {"message_id": message_id, "channel": "sms", "to": "+447700900123", "body": "hi"}
            intake.publish(json.dumps(body).encode())
        # Then none is taken while paused (absence, after the positive signal above)
        time.sleep(1.5)
        assert intake.acked == 0 and not intake.unacked and sum(provider.calls.values()) == 0
        # When it resumes, every one is delivered
        now = datetime.now(UTC)
        flags.change(lambda f: f.set(DELIVERY_PAUSED, False, by="test", reason="over", now=now), now=now)
        wait_until(lambda: intake.acked == len(ids), 15, message=lambda: f"{intake.acked} acked")
        wait_until(lambda: all(provider.calls[m] == 1 for m in ids), 15, message="all delivered")
    finally:
        runtime.stop(timeout=5)
        store.close()
