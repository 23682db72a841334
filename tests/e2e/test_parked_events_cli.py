"""Poison events end to end: ``smeg projections run`` parks them and keeps going, and
``smeg projections status`` / ``smeg projections parked`` show them (PostgreSQL, RabbitMQ)."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

import pika
from sqlalchemy import Engine

from adapters.event_store import Change, MessageStore
from adapters.sql import make_engine
from domain.message import Message
from smeg_actors.runtime.read_models import follower_status
from tests.e2e.conftest import AMQP_URL, run_cli, smeg_env
from tests.waiting import wait_until

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=timezone.utc)


def seed(store: MessageStore) -> None:
    """Five delivered messages; the third has a NUL in its correlation id (PostgreSQL text refuses it)."""
    messages = []
    for i in range(5):
        message = Message.receive(
            message_id=f"m-{i}",
            channel="sms",
            to="+447700900123",
            body="hi",
            correlation_id="bad\x00id" if i == 2 else f"c-{i}",
            now=T0,
        )
        message.start_attempt("prov-a", now=T0)
        message.record_delivery("pid", now=T0, latency_ms=1.0)
        messages.append(message)
    outcomes = store.commit([Change(load=lambda m=m: m) for m in messages])
    assert all(outcome.saved for outcome in outcomes)


def wait_until_caught_up(store: MessageStore, engine: Engine, smeg: Any, timeout: float = 45) -> None:
    def caught_up() -> bool:
        smeg.assert_running()
        try:
            rows = follower_status(store, engine)
        except Exception:  # tables not created yet
            rows = []
        return bool(rows) and all(row.lag_events == 0 for row in rows if row.lag_events is not None)

    wait_until(caught_up, timeout, 0.2, message=lambda: f"not caught up:\n{smeg.output()[-3000:]}")


def test_the_projector_parks_a_poison_event_and_keeps_running(
    pg_schema: tuple[str, str], e2e_prefix: str, start_smeg: Any
) -> None:
    # Given a store holding a poison event, and a subscriber to the events exchange
    url, schema = pg_schema
    store, engine = MessageStore(url, schema=schema), make_engine(url, schema=schema)
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    try:
        seed(store)
        channel = connection.channel()
        channel.exchange_declare(f"{e2e_prefix}.events", exchange_type="topic", durable=True)
        queue = channel.queue_declare("", exclusive=True).method.queue
        channel.queue_bind(queue, f"{e2e_prefix}.events", routing_key="message.#")

        # When the read models and the exchange are run (as smeg run's child does)
        env = smeg_env(SMEG_DATABASE_URL=url, SMEG_DATABASE_SCHEMA=schema, SMEG_QUEUE_PREFIX=e2e_prefix)
        smeg = start_smeg(env, "projections", "run")

        # Then it catches up past the poison event and is still running (it used to crash-loop)
        wait_until_caught_up(store, engine, smeg)
        published = 0
        while channel.basic_get(queue, auto_ack=True)[0] is not None:
            published += 1
        assert published == 15  # the exchange publishes the poison event's message like any other
        # (still running: it applies an event committed after the poison one, then runs on)
        later = Message.receive(
            message_id="later", channel="sms", to="+447700900123", body="hi", correlation_id="c-l", now=T0
        )
        assert store.commit([Change(load=lambda: later)])[0].saved
        wait_until_caught_up(store, engine, smeg)
        assert smeg.process.poll() is None
        status = {row.name: row for row in follower_status(store, engine)}
        assert status["message_status"].parked == 1
        assert [row.parked for name, row in status.items() if name != "message_status"] == [0, 0, 0, 0]
        assert '"event": "event_parked"' in smeg.output() and '"message_id": "m-2"' in smeg.output()
    finally:
        connection.close()
        store.close()
        engine.dispose()


def test_projections_status_and_parked_show_parked_events(pg_schema: tuple[str, str]) -> None:
    # Given read models that parked an event
    url, schema = pg_schema
    store = MessageStore(url, schema=schema)
    try:
        seed(store)
    finally:
        store.close()
    env = smeg_env(SMEG_DATABASE_URL=url, SMEG_DATABASE_SCHEMA=schema)
    assert run_cli(env, "report", "--format", "json").returncode == 0  # catches the read models up

    # When / Then: status --json gives each follower's count and the latest parked events
    status = run_cli(env, "projections", "status", "--json")
    assert status.returncode == 0, status.stderr
    followers = {row["name"]: row for row in json.loads(status.stdout)["followers"]}
    assert followers["message_status"]["parked"] == 1
    [latest] = followers["message_status"]["latest_parked"]
    assert latest["message_id"] == "m-2" and latest["version"] == 1
    assert latest["topic"].endswith("Message.Received") and "0x00" in latest["error"]
    assert (
        followers["delivery_stats_hourly"]["parked"] == 0 and followers["message_status"]["lag_events"] == 0
    )

    # The table has a parked column, and a line per latest parked event
    text = run_cli(env, "projections", "status")
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[0].split()[-1] == "parked"
    assert next(line for line in lines if line.startswith("message_status")).split()[-1] == "1"
    assert any(line.startswith("  message_status: position") and "m-2" in line for line in lines)

    # parked lists them, as JSON or one a line, for one follower or for all
    listed = run_cli(env, "projections", "parked", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [(p["follower"], p["position"]) for p in json.loads(listed.stdout)] == [
        ("message_status", latest["position"])
    ]
    assert (
        json.loads(run_cli(env, "projections", "parked", "--follower", "events_exchange", "--json").stdout)
        == []
    )
    one_a_line = run_cli(env, "projections", "parked").stdout.splitlines()
    assert len(one_a_line) == 1 and "m-2" in one_a_line[0] and "Received" in one_a_line[0]
