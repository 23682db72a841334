"""Failover, pinned providers and weighted routes through the whole pipeline, against the real
RabbitMQ, on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pika
import pytest

from adapters.event_store import MessageStore
from domain.message import BACKED_OFF, DELIVERED, HELD, Message
from smeg_actors.runtime.bootstrap import build_runtime
from smeg_actors.runtime.config import Settings
from smeg_actors.runtime.pipeline import Runtime
from tests.fakes import FakeProvider
from tests.integration.test_provider_hold import _status, pipeline_settings
from tests.waiting import wait_until

#: The runtimes a test started, each with its store (the ``running`` fixture stops and closes them).
Running = list[tuple[Runtime, MessageStore]]

CIRCUIT = {"activation_threshold": 4, "open_for": 1, "max_open_for": 2, "half_open_attempts": 2}


def publish(rabbit: Any, prefix: str, message_id: str, **more: str) -> None:
    body = {"message_id": message_id, "channel": "sms", "to": "+447700900123", "body": "hi", **more}
    rabbit.basic_publish(
        "", f"{prefix}.send", json.dumps(body).encode(), pika.BasicProperties(delivery_mode=2)
    )


def two_providers(
    database: tuple[str, str], amqp_url: str, prefix: str, **more: Any
) -> tuple[Settings, FakeProvider, FakeProvider]:
    providers = {
        "a": {"type": "simulated", "fallback": ["b"], "circuit": CIRCUIT},
        "b": {"type": "simulated", "circuit": CIRCUIT},
    }
    settings = pipeline_settings(
        database,
        amqp_url,
        prefix,
        max_attempts=5,
        backoff_initial=0.2,
        backoff_factor=2,
        providers=providers,
        **more,
    )
    return settings, FakeProvider("a"), FakeProvider("b")


@pytest.fixture
def running(database: tuple[str, str]) -> Iterator[list[tuple[Runtime, MessageStore]]]:
    """Each runtime is stopped before its store is closed: an actor still querying a closed SQLite
    connection can crash the interpreter (it did once in CI: a segfault in the projector's read)."""
    started: list[tuple[Runtime, MessageStore]] = []
    yield started
    for runtime, store in started:
        runtime.stop(timeout=5)
        store.close()


def start(
    running: list[tuple[Runtime, MessageStore]],
    database: tuple[str, str],
    settings: Settings,
    *providers: FakeProvider,
) -> MessageStore:
    url, schema = database
    store = MessageStore(url, schema=schema)
    runtime = build_runtime(settings, store=store, providers={p.name: p for p in providers}, redrive=False)
    runtime.start()
    running.append((runtime, store))
    return store


def test_an_outage_of_the_primary_moves_messages_to_the_fallback_within_two_attempts(
    running: Running, database: tuple[str, str], amqp_url: str, prefix: str, rabbit: Any
) -> None:
    # Given a primary that is down and a healthy fallback
    settings, a, b = two_providers(database, amqp_url, prefix)
    a.down = True
    store = start(running, database, settings, a, b)
    ids = [f"f-{i}" for i in range(20)]

    # When requests arrive
    for message_id in ids:
        publish(rabbit, prefix, message_id)

    # Then each is delivered by the fallback, after at most two attempts on the primary
    wait_until(lambda: all(_status(store, m) == DELIVERED for m in ids), 30, message="all delivered")
    for message_id in ids:
        history = store.history(Message.create_id(message_id))
        providers = [e.provider for e in history if type(e).__name__ == "Attempted"]
        assert providers[-1] == "b" and providers.count("a") <= 2, (message_id, providers)
        assert "Failed" not in [type(e).__name__ for e in history]
        assert b.keys[message_id] == [message_id]  # the Idempotency-Key stays the message id
    # and once the primary's circuit opened, messages went straight to the fallback
    assert sum(a.calls.values()) < 2 * len(ids)


def test_a_pinned_provider_is_never_moved(
    running: Running, database: tuple[str, str], amqp_url: str, prefix: str, rabbit: Any
) -> None:
    settings, a, b = two_providers(database, amqp_url, prefix)
    a.down = True
    store = start(running, database, settings, a, b)

    publish(rabbit, prefix, "pinned", provider="a")
    publish(rabbit, prefix, "free")

    wait_until(lambda: _status(store, "free") == DELIVERED, 30, message="the unpinned one delivered")
    wait_until(lambda: a.calls["pinned"] >= 3, 30, message="the pinned one retried on its provider")
    assert _status(store, "pinned") in (BACKED_OFF, HELD, "in_flight")
    assert b.calls["pinned"] == 0
    history = store.history(Message.create_id("pinned"))
    assert {e.provider for e in history if type(e).__name__ == "Attempted"} == {"a"}


def test_a_weighted_route_splits_messages_by_weight(
    running: Running, database: tuple[str, str], amqp_url: str, prefix: str, rabbit: Any
) -> None:
    settings, a, b = two_providers(
        database, amqp_url, prefix, routes={"sms": {"weights": {"a": 80, "b": 20}}}
    )
    store = start(running, database, settings, a, b)
    ids = [f"w-{i}" for i in range(300)]

    for message_id in ids:
        publish(rabbit, prefix, message_id)

    wait_until(lambda: sum(a.calls.values()) + sum(b.calls.values()) >= len(ids), 60, message="all sent")
    wait_until(lambda: all(_status(store, m) == DELIVERED for m in ids[-5:]), 30, message="last delivered")
    split = Counter({"a": sum(a.calls.values()), "b": sum(b.calls.values())})
    assert split.total() == len(ids)  # one attempt each
    assert 0.70 < split["a"] / len(ids) < 0.90, split
