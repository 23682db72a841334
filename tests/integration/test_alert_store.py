"""Alerts in the real store (SQLite and PostgreSQL): two writers deciding at once record one
transition; the sensors' queries read the read models."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine

from adapters.alert_store import AlertStore
from adapters.event_store import Change, MessageStore
from adapters.schedule_view import oldest_backoff_due
from adapters.status_view import failed_since
from domain.alert import FIRING, AlertRule, Observation
from domain.backoff import BackoffPolicy
from domain.message import Message
from smeg_actors.runtime.alerting import projection_lag
from smeg_actors.runtime.read_models import ReadModelSet, runners

T0 = datetime(2026, 12, 7, 7, 0, tzinfo=UTC)
RULE = AlertRule("provider_down", threshold=1)
DOWN = Observation("provider_down", "a", 5.0, True, "a is down")


def test_two_writers_deciding_at_once_record_one_raise(store_and_engine: tuple[MessageStore, Engine]) -> None:
    store, _ = store_and_engine
    first, second = AlertStore(store), AlertStore(store)
    stale = first.get("provider_down", "a")
    assert stale is None

    alert, recorded = first.change(
        "provider_down", "a", lambda a: a.observe(DOWN, RULE, now=T0, clear_since=None), now=T0
    )
    assert recorded and alert.status == FIRING
    # the second decided on what it read before: reloaded, it finds nothing left to record
    again, recorded_again = second.change(
        "provider_down", "a", lambda a: a.observe(DOWN, RULE, now=T0, clear_since=None), now=T0
    )
    assert not recorded_again and again.episode == 1
    names = [type(e).__name__ for e in store.history(alert.id)]
    assert names == ["Opened", "AlertRaised"]
    assert store.read_events(0, 100)[0] == []  # the messages' followers never see alerts


def test_the_sensors_queries_read_failures_and_overdue_retries(
    store_and_engine: tuple[MessageStore, Engine],
) -> None:
    store, engine = store_and_engine
    now = datetime.now(UTC)
    for message_id, outcome in (("f1", "fail"), ("b1", "back_off")):
        message = Message.receive(
            message_id=message_id, channel="sms", to="+15550000000", body="x", correlation_id="c", now=now
        )
        message.start_attempt("sms-eu", now=now)
        if outcome == "fail":
            message.record_permanent_failure("400", error="Rejected", now=now, status_code=400)
        else:
            message.record_transient_failure("503", error="T", policy=BackoffPolicy(initial=30), now=now)
        store.commit([Change(load=lambda m=message: m)])
    ReadModelSet(store, runners(store, engine)).catch_up()
    assert failed_since(engine, now - timedelta(seconds=1)) == {"sms-eu": 1}
    assert failed_since(engine, now + timedelta(seconds=1)) == {}
    due = oldest_backoff_due(engine)
    assert due is not None and abs((due - (now + timedelta(seconds=30))).total_seconds()) < 1


def test_the_index_learns_every_key_an_alert_was_opened_for(
    store_and_engine: tuple[MessageStore, Engine],
) -> None:
    store, _ = store_and_engine
    alerts = AlertStore(store)
    assert alerts.index() is None
    for key in ("a", "b", "a"):
        seen = Observation("provider_down", key, 5.0, True, f"{key} is down")
        alerts.change(
            "provider_down", key, lambda x, s=seen: x.observe(s, RULE, now=T0, clear_since=None), now=T0
        )
    restarts = Observation("restart_storm", "host/42", 6.0, True, "6 restarts")
    storm = AlertRule("restart_storm", threshold=5)
    alerts.change(
        "restart_storm", "host/42", lambda x: x.observe(restarts, storm, now=T0, clear_since=None), now=T0
    )
    index = alerts.index()
    assert index is not None
    assert index.keys == [("provider_down", "a"), ("provider_down", "b"), ("restart_storm", "host/42")]


def test_the_projection_lag_sensor_names_each_read_model_behind_the_log(
    store_and_engine: tuple[MessageStore, Engine],
) -> None:
    store, engine = store_and_engine
    read_models = ReadModelSet(store, runners(store, engine))
    read_models.catch_up()
    old = datetime.now(UTC) - timedelta(seconds=400)
    message = Message.receive(
        message_id="lag", channel="sms", to="+15550000000", body="x", correlation_id="c", now=old
    )
    store.commit([Change(load=lambda: message)])
    sensor = projection_lag(store, engine, AlertRule("projection_lag", threshold=300))

    behind = {o.key: o for o in sensor(datetime.now(UTC))}
    assert set(behind) >= {"message_status", "delivery_stats_hourly"}
    assert all(o.breached and o.value >= 400 for k, o in behind.items() if k != "events_exchange")

    read_models.catch_up()
    caught_up = {o.key: o for o in sensor(datetime.now(UTC)) if o.key != "events_exchange"}
    assert caught_up and not any(o.breached for o in caught_up.values())
