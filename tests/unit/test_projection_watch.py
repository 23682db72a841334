"""The projection-lag gauges, read from a real SQLite store, a failed read logged once per outage,
and the readiness of ``smeg projections run`` (its loop stepping, its store answering)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import Engine, insert

from adapters.event_store import Change, MessageStore
from adapters.failed_outbox import TRACKING_NAME as FAILED_TRACKING
from adapters.projections import step_together, tracking
from adapters.sql import make_engine, read_models_beside
from domain.message import Message
from smeg_actors.runtime import projection_watch as watch_module
from smeg_actors.runtime import read_models
from smeg_actors.runtime import readiness as readiness_module
from smeg_actors.runtime.projection_watch import ProjectionWatch
from smeg_actors.runtime.readiness import Pulse, for_projector
from tests.logcapture import captured_logs, json_lines
from tests.waiting import wait_until

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=timezone.utc)
READ_MODELS = ("message_status", "delivery_stats_hourly", "failures_by_reason")


@pytest.fixture
def db(tmp_path: Path) -> Iterator[tuple[MessageStore, Engine]]:
    url = f"sqlite:///{tmp_path}/smeg.db"
    store, engine = MessageStore(url), make_engine(read_models_beside(url))
    yield store, engine
    store.close()
    engine.dispose()


def delivered(store: MessageStore, *names: str) -> int:
    """Each message received, attempted and delivered (three events); the log's head."""
    messages = []
    for name in names:
        message = Message.receive(
            message_id=name, channel="sms", to="+447700900123", body="hi", correlation_id=f"c-{name}", now=T0
        )
        message.start_attempt("prov-a", now=T0)
        message.record_delivery("pid", now=T0, latency_ms=1.0)
        messages.append(message)
    assert all(o.saved for o in store.commit([Change(load=lambda m=m: m) for m in messages]))
    return store.max_position()


def lag(projection: str, unit: str = "events") -> float | None:
    return REGISTRY.get_sample_value(f"smeg_projection_lag_{unit}", {"projection": projection})


def test_the_gauges_show_each_followers_lag_and_fall_to_zero_once_it_caught_up(
    db: tuple[MessageStore, Engine],
) -> None:
    # Given two delivered messages in the store, read models that have applied none of them yet,
    # and the failed-queue outbox's position (a follower without a lag)
    store, engine = db
    head = delivered(store, "w-1", "w-2")
    runners = read_models.runners(store, engine)
    with engine.begin() as connection:
        connection.execute(insert(tracking).values(projection=FAILED_TRACKING, position=head))
    watch = ProjectionWatch(lambda: db)

    # When the watch reads
    watch.read()

    # Then each read model and the events exchange is the whole log behind, its oldest event that old
    for name in (*READ_MODELS, "events_exchange"):
        assert lag(name) == head == 6
        seconds = lag(name, "seconds")
        assert seconds is not None and seconds >= (datetime.now(timezone.utc) - T0).total_seconds() - 60
    assert lag(FAILED_TRACKING) is None and lag(FAILED_TRACKING, "seconds") is None

    # and once the read models applied the log, theirs is 0; the exchange's has not moved
    step_together(store, runners)
    watch.read()
    for name in READ_MODELS:
        assert (lag(name), lag(name, "seconds")) == (0, 0)
    assert lag("events_exchange") == head


def test_the_thread_reads_every_interval_on_a_store_of_its_own(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/smeg.db"
    opened: list[tuple[MessageStore, Engine]] = []

    def opener() -> tuple[MessageStore, Engine]:
        opened.append((MessageStore(url), make_engine(read_models_beside(url))))
        return opened[-1]

    writer, engine = MessageStore(url), make_engine(read_models_beside(url))
    read_models.runners(writer, engine)
    head = delivered(writer, "t-1")
    watch = ProjectionWatch(opener, every=0.05)
    watch.start()
    try:
        wait_until(lambda: lag("message_status") == head, 5, message=lambda: f"{lag('message_status')}")
        delivered(writer, "t-2")
        wait_until(lambda: lag("message_status") == head + 3, 5, message=lambda: f"{lag('message_status')}")
    finally:
        watch.stop()
        watch.join(5)
        writer.close()
        engine.dispose()
    assert not watch.is_alive() and len(opened) == 1 and watch.opened is None  # closed at the end


def test_a_failed_read_is_logged_once_per_outage_and_leaves_the_last_values(
    db: tuple[MessageStore, Engine], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a watch that has read the lag once
    store, engine = db
    read_models.runners(store, engine)
    head = delivered(store, "o-1")
    watch = ProjectionWatch(lambda: db)
    watch.read()
    assert lag("message_status") == head

    def unreadable(*_args: Any, **_kwargs: Any) -> list[Any]:
        raise RuntimeError("database is locked " + "x" * 400 + "\n[SQL: SELECT ...]")

    with captured_logs("info", watch_module) as stream:
        # When the reads fail three times, then one succeeds, then they fail again
        monkeypatch.setattr(watch_module, "follower_status", unreadable)
        delivered(store, "o-2")
        for _ in range(3):
            watch.read()
        # Then the last values stay
        assert lag("message_status") == head
        monkeypatch.undo()
        watch.read()
        assert lag("message_status") == head + 3
        monkeypatch.setattr(watch_module, "follower_status", unreadable)
        watch.read()
        watch.read()

    # and each outage is one warning, of one line of at most 300 characters
    lines = json_lines(stream)
    assert [line["event"] for line in lines] == ["projection_lag_unreadable"] * 2
    assert all(line["level"] == "warning" for line in lines)
    error = lines[0]["error"]
    assert error.startswith("RuntimeError: database is locked xxx") and len(error) == 300
    assert "\n" not in error


def test_a_store_that_cannot_be_opened_is_an_outage_like_any_other(tmp_path: Path) -> None:
    calls: list[int] = []

    def opener() -> tuple[MessageStore, Engine]:
        calls.append(1)
        raise OSError("unable to open database file")

    watch = ProjectionWatch(opener)
    with captured_logs("info", watch_module) as stream:
        watch.read()
        watch.read()
    assert len(calls) == 2 and watch.opened is None
    assert [line["error"] for line in json_lines(stream)] == ["OSError: unable to open database file"]


def test_the_projector_is_ready_while_its_loop_steps_and_its_store_answers(
    db: tuple[MessageStore, Engine], monkeypatch: pytest.MonkeyPatch
) -> None:
    store, _engine = db
    pulse = Pulse()
    readiness = for_projector(store, pulse)
    readiness.store_error = None
    assert readiness.state() == (False, ["projection loop not started"])

    # When the loop runs a few rounds (run_forever asks its stop event once a round)
    rounds = iter([0, 0])

    def step(*_args: Any, **_kwargs: Any) -> int:
        if next(rounds, None) is None:
            pulse.set()
        return 0

    monkeypatch.setattr(read_models, "step_together", step)
    read_models.run_forever(store, [], None, pulse, interval=0.0)
    pulse.clear()
    assert readiness.state() == (True, [])

    # Then a loop silent for too long, a store that does not answer, a stop: each is a reason
    class Unanswering:
        def ping(self) -> None:
            raise RuntimeError("gone")

    assert pulse.beat is not None
    pulse.beat -= readiness_module.STALLED + 5
    readiness = for_projector(Unanswering(), pulse)
    readiness.start()
    try:
        wait_until(lambda: readiness.store_error, 5)
    finally:
        readiness.stop()
    pulse.set()
    ready, reasons = readiness.state()
    assert not ready
    assert reasons[0] == "stopping: signal"
    assert reasons[1].startswith("projection loop: no step for 3") and reasons[1].endswith(" s")
    assert reasons[2] == "store unavailable: RuntimeError: gone"


def test_asking_whether_to_stop_from_another_thread_is_no_beat() -> None:
    pulse = Pulse()
    assert not pulse.stopping() and pulse.beat is None and not pulse.stepping()
    pulse.set()
    assert pulse.stopping() and pulse.beat is None
    assert pulse.is_set() and pulse.beat is not None and time.monotonic() - pulse.beat < 1
    assert pulse.stepping()
