"""A disabled provider holds its messages without an attempt, and they are delivered once it is
enabled again: the whole pipeline against the real RabbitMQ, on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pika
import pytest

from adapters.event_store import MessageStore
from adapters.provider_health_store import ProviderHealthStore
from domain.message import DELIVERED, HELD, Message
from smeg_actors.actors.provider_health import PACED
from smeg_actors.runtime.bootstrap import build_runtime
from smeg_actors.runtime.config import Settings
from smeg_actors.runtime.pipeline import Runtime
from tests.fakes import FakeProvider
from tests.waiting import wait_until

IDS = ("h-1", "h-2", "h-3")
GRACE = timedelta(seconds=1)


def pipeline_settings(database: tuple[str, str], amqp_url: str, prefix: str, **more: Any) -> Settings:
    """Two workers, read models in-process (their effects asserted at once), a short heartbeat."""
    url, schema = database
    return Settings(
        database_url=url,
        database_schema=schema,
        amqp_url=amqp_url,
        queue_prefix=prefix,
        workers=2,
        projector="inline",
        heartbeat=10,
        **more,
    )


@pytest.fixture
def started(database: tuple[str, str], amqp_url: str, prefix: str) -> Iterator[tuple[Runtime, MessageStore]]:
    url, schema = database
    settings = pipeline_settings(database, amqp_url, prefix)
    store = MessageStore(url, schema=schema)
    provider = FakeProvider()
    ProviderHealthStore(store).change(
        provider.name, lambda h: h.disable(by="alice", reason="incident 42", now=_now()), now=_now()
    )
    runtime = build_runtime(settings, store=store, providers={provider.name: provider}, redrive=False)
    runtime.start()
    try:
        yield runtime, store
    finally:
        runtime.stop(timeout=5)
        store.close()


def test_a_disabled_provider_holds_without_attempts_then_delivers_once_enabled(
    started: tuple[Runtime, MessageStore], rabbit: Any, prefix: str
) -> None:
    runtime, store = started
    provider = runtime.providers["fake"]
    assert isinstance(provider, FakeProvider)

    # When requests arrive while the provider is disabled
    for message_id in IDS:
        body = {"message_id": message_id, "channel": "sms", "to": "+447700900123", "body": "hi"}
        rabbit.basic_publish(
            "", f"{prefix}.send", json.dumps(body).encode(), pika.BasicProperties(delivery_mode=2)
        )

    # Then each is held, with no attempt, and its history says why
    wait_until(lambda: all(_status(store, m) == HELD for m in IDS), 20, message="messages held")
    assert sum(provider.calls.values()) == 0
    held = store.get_by_message_id("h-1")
    assert (held.attempts, held.cycle_attempts, held.held) == (
        0,
        0,
        ("fake", "provider disabled by alice: incident 42"),
    )
    # Re-checks while still disabled (every 5 s) add no second Held: let one pass, then look
    first_recheck = held.retry_at
    assert first_recheck is not None
    looked_again = first_recheck + timedelta(seconds=1.5)  # due, released and begun again by then
    wait_until(lambda: datetime.now(timezone.utc) > looked_again, 10, message="a re-check is past")
    assert [type(e).__name__ for e in store.history(held.id)] == ["Received", "Held"]

    # When an operator enables it again
    ProviderHealthStore(store).change("fake", lambda h: h.enable(by="bob", now=_now()), now=_now())

    # Then every held message is delivered, attempted once, its history explaining the wait
    wait_until(lambda: all(_status(store, m) == DELIVERED for m in IDS), 20, message="messages delivered")
    assert all(provider.calls[m] == 1 for m in IDS)
    # (released at the ramp's pace: a message may wait for its slot, and its history says so)
    for message_id in IDS:
        history = store.history(Message.create_id(message_id))
        assert outside_pace(history) == ["Received", "Held", "Attempted", "Delivered"]


def outside_pace(history: list[Any]) -> list[str]:
    """The event names of a history, waits for a slot of the provider's pace left out."""
    return [type(e).__name__ for e in history if getattr(e, "reason", None) != PACED]


def _status(store: MessageStore, message_id: str) -> str | None:
    try:
        return store.get_by_message_id(message_id).status
    except Exception:
        return None


def _now() -> datetime:
    return datetime.now(timezone.utc)


def test_an_outage_opens_the_circuit_holds_messages_and_exhausts_none(
    database: tuple[str, str], amqp_url: str, prefix: str, rabbit: Any
) -> None:
    # Given a provider that is down, a breaker that trips after 4 attempts, 3 attempts a cycle
    url, schema = database
    circuit = {"activation_threshold": 4, "open_for": 1, "max_open_for": 2, "half_open_attempts": 2}
    settings = pipeline_settings(
        database,
        amqp_url,
        prefix,
        max_attempts=3,
        backoff_initial=0.2,
        backoff_factor=2,
        providers={"fake": {"type": "simulated", "circuit": circuit}},
    )
    store = MessageStore(url, schema=schema)
    provider = FakeProvider()
    provider.down = True
    runtime = build_runtime(settings, store=store, providers={provider.name: provider}, redrive=False)
    runtime.start()
    ids = [f"o-{i}" for i in range(10)]
    try:
        for message_id in ids:
            body = {"message_id": message_id, "channel": "sms", "to": "+447700900123", "body": "hi"}
            rabbit.basic_publish(
                "", f"{prefix}.send", json.dumps(body).encode(), pika.BasicProperties(delivery_mode=2)
            )

        # When the outage lasts (several open periods, their half-open trials failing)
        wait_until(lambda: all(_status(store, m) == HELD for m in ids), 30, message="every message held")
        wait_until(lambda: _reopenings(store) >= 2, 30, message="a few failed half-open periods")
        during = sum(provider.calls.values())
        provider.down = False

        # Then, once the provider is back, everything is delivered and nothing was exhausted
        wait_until(lambda: all(_status(store, m) == DELIVERED for m in ids), 40, message="all delivered")
    finally:
        runtime.stop(timeout=5)
    health = ProviderHealthStore(store).get("fake")
    assert health is not None and health.circuit == "closed"
    transitions = store.history(health.id)
    opened_at = min(e.timestamp for e in transitions if type(e).__name__ == "CircuitOpened")
    closed_at = max(e.timestamp for e in transitions if type(e).__name__ == "CircuitClosed")
    for message_id in ids:
        history = store.history(Message.create_id(message_id))
        attempts = [e for e in history if type(e).__name__ == "Attempted"]
        # (a batch another worker began as the breaker tripped may still go: 1 s of grace)
        through_open = [e for e in attempts if opened_at + GRACE < e.timestamp < closed_at and not e.trial]
        assert through_open == [], f"{message_id}: attempted through a circuit that was not closed"
        assert "Failed" not in [type(e).__name__ for e in history]
    store.close()
    assert during <= 10 + 2 * 6, f"{during} calls during the outage"  # first attempts + a few trials


def _reopenings(store: MessageStore) -> int:
    health = ProviderHealthStore(store).get("fake")
    return 0 if health is None else health.reopenings


def test_held_messages_are_released_at_the_ramp_pace_oldest_first(
    database: tuple[str, str], amqp_url: str, prefix: str, rabbit: Any
) -> None:
    # Given 30 messages held while their provider is disabled (one process: the whole ramp, 10/s)
    url, schema = database
    store = MessageStore(url, schema=schema)
    provider = FakeProvider()
    ProviderHealthStore(store).change(
        provider.name, lambda h: h.disable(by="alice", reason="incident", now=_now()), now=_now()
    )
    settings = pipeline_settings(database, amqp_url, prefix)
    runtime = build_runtime(settings, store=store, providers={provider.name: provider}, redrive=False)
    runtime.start()
    ids = [f"r-{i:02d}" for i in range(30)]
    try:
        for message_id in ids:
            body = {"message_id": message_id, "channel": "sms", "to": "+447700900123", "body": "hi"}
            rabbit.basic_publish(
                "", f"{prefix}.send", json.dumps(body).encode(), pika.BasicProperties(delivery_mode=2)
            )
            time.sleep(0.01)  # received in this order
        wait_until(lambda: all(_status(store, m) == HELD for m in ids), 20, message="all held")

        # When it is enabled again
        ProviderHealthStore(store).change("fake", lambda h: h.enable(by="bob", now=_now()), now=_now())
        wait_until(lambda: all(_status(store, m) == DELIVERED for m in ids), 30, message="all delivered")
    finally:
        runtime.stop(timeout=5)

    # Then they went out over about 3 s (10/s), not at once, and the oldest first
    attempted = {m: _attempts(store, m)[-1] for m in ids}
    times = sorted(attempted.values())
    assert (times[-1] - times[0]).total_seconds() >= 2.0, f"released within {times[-1] - times[0]}"
    assert max(attempted[m] for m in ids[:10]) < min(attempted[m] for m in ids[-10:])
    assert sum(provider.calls.values()) == len(ids)
    store.close()


def _attempts(store: MessageStore, message_id: str) -> list[datetime]:
    history = store.history(Message.create_id(message_id))
    return [e.timestamp for e in history if type(e).__name__ == "Attempted"]
