"""Poison events are parked, not retried forever: one bad event costs one event, not the pipeline.

An event a follower cannot handle — a NUL that PostgreSQL text refuses, a correlation id longer
than an AMQP short string — is recorded in ``parked_events`` and the follower goes on past it;
a store or broker that is down is still raised and retried, and nothing is parked for it.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pika
import pytest
from eventsourcing.domain import DomainEvent
from sqlalchemy import Connection, Engine, Table, event, select
from sqlalchemy.exc import OperationalError

import adapters.events_exchange as events_exchange
from adapters.event_store import Change, MessageStore
from adapters.events_exchange import EventsExchangePublisher
from adapters.failed_outbox import FailedOutbox
from adapters.parked_events import parked_events
from adapters.projections import (
    History,
    Projection,
    ProjectionRunner,
    ShadowRebuild,
    Write,
    read_position,
    step_together,
)
from adapters.rabbitmq import BrokerUnavailableError, Topology
from adapters.rabbitmq_failed import RabbitFailurePublisher
from adapters.sql import make_engine
from adapters.stats_view import delivery_stats_hourly, failures_by_reason
from adapters.status_view import MessageStatusProjection, message_status
from domain.message import Message
from domain.request import SendRequest, mask_address
from smeg_actors.runtime.read_models import all_projections, follower_status, runners

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=timezone.utc)
#: 128 characters, 384 UTF-8 bytes: within the request's 128-character limit, beyond AMQP's 255 bytes.
LONG_CORRELATION_ID = "€" * 128
NUL = "\x00"


@pytest.fixture
def db(store_and_engine: tuple[MessageStore, Engine]) -> tuple[MessageStore, Engine]:
    return store_and_engine


@pytest.fixture
def pg(pg_schema: tuple[str, str]) -> Iterator[tuple[MessageStore, Engine]]:
    url, schema = pg_schema
    store, engine = MessageStore(url, schema=schema), make_engine(url, schema=schema)
    yield store, engine
    store.close()
    engine.dispose()


def message(
    name: str,
    *,
    correlation_id: str | None = None,
    reason: str | None = None,
    sender: str | None = None,
    metadata: dict[str, str] | None = None,
    at: int = 0,
) -> Message:
    """Received, attempted, then delivered — or failed for good with ``reason``."""
    now = T0 + timedelta(seconds=at)
    created = Message.receive(
        message_id=name,
        channel="sms",
        to="+447700900123",
        body="secret body",
        correlation_id=correlation_id if correlation_id is not None else f"c-{name}",
        sender=sender,
        metadata=metadata,
        now=now,
    )
    created.start_attempt("prov-a", now=now + timedelta(seconds=1))
    if reason is None:
        created.record_delivery("pid", now=now + timedelta(seconds=2), latency_ms=3.0)
    else:
        created.record_permanent_failure(reason, error="E", now=now + timedelta(seconds=2), status_code=400)
    return created


def commit(store: MessageStore, *messages: Message) -> None:
    outcomes = store.commit([Change(load=lambda m=m: m) for m in messages])
    assert all(outcome.saved for outcome in outcomes), outcomes


def position_of(store: MessageStore, name: str, kind: type[DomainEvent]) -> int:
    wanted = Message.create_id(name)
    entries, _ = store.read_events(0, 100_000)
    return next(at for at, e in entries if e.originator_id == wanted and isinstance(e, kind))


def parked(engine: Engine) -> list[tuple[str, int, str]]:
    with engine.connect() as connection:
        query = select(parked_events.c.follower, parked_events.c.position, parked_events.c.message_id)
        return sorted((row.follower, row.position, row.message_id) for row in connection.execute(query))


def rows(engine: Engine, table: Table) -> list[tuple[Any, ...]]:
    with engine.connect() as connection:
        return sorted(tuple(r) for r in connection.execute(select(table)))


def follow(store: MessageStore, engine: Engine, batch: int = 1000) -> None:
    """Step every read model together until each is at the head (what ``smeg projections run`` does)."""
    from tests.waiting import wait_until

    mine = runners(store, engine)
    wait_until(
        lambda: (
            not step_together(store, mine, batch=batch)
            and all(r.position() >= store.max_position() for r in mine)
        ),
        60,
        0,
        message=lambda: f"not at the head ({store.max_position()}): {[r.position() for r in mine]}",
    )


# --- read models ------------------------------------------------------------------------------


def test_a_nul_in_a_correlation_id_is_parked_by_message_status_alone_and_the_rest_is_applied(
    pg: tuple[MessageStore, Engine],
) -> None:
    # Given a log where one message of five has a NUL in its correlation id (PostgreSQL text refuses it)
    store, engine = pg
    commit(store, message("ok-1"), message("ok-2"))
    commit(store, message("bad", correlation_id=f"c{NUL}1"), message("ok-3"), message("ok-4"))

    # When the read models follow the log
    follow(store, engine)

    # Then message_status parked that one Received (and nothing else), and is at the head
    head = store.max_position()
    bad_at = position_of(store, "bad", Message.Received)
    assert parked(engine) == [("message_status", bad_at, "bad")]
    assert [r.position() for r in runners(store, engine)] == [head] * 4
    statuses = {row[1]: row[3] for row in rows(engine, message_status)}
    assert statuses == {f"ok-{i}": "delivered" for i in range(1, 5)}  # the bad one's later events: no row
    # The counters, which do not keep the correlation id, counted every message
    assert sum(row[3] for row in rows(engine, delivery_stats_hourly)) == 5  # received
    # The parked row says what, where and why, on one line
    with engine.connect() as connection:
        row = connection.execute(select(parked_events)).one()
    assert row.originator_id == Message.create_id("bad") and row.originator_version == 1
    assert row.topic.endswith("Message.Received")
    assert "0x00" in row.error and "\n" not in row.error
    # And following again changes nothing
    follow(store, engine)
    assert len(parked(engine)) == 1


def test_a_nul_in_a_failure_reason_is_parked_by_the_two_tables_that_keep_it(
    pg: tuple[MessageStore, Engine],
) -> None:
    # Given a message that failed with a NUL in the provider's reason, among good failures
    store, engine = pg
    commit(store, message("f-1", reason="http 400"), message("bad", reason=f"bad{NUL}reason"))
    commit(store, message("f-2", reason="http 400"))

    # When
    follow(store, engine, batch=4)

    # Then message_status and failures_by_reason each parked its Failed event; the hourly stats took it
    failed_at = position_of(store, "bad", Message.Failed)
    assert parked(engine) == [("failures_by_reason", failed_at, "bad"), ("message_status", failed_at, "bad")]
    assert {row[1]: row[3] for row in rows(engine, message_status)} == {
        "f-1": "failed",
        "f-2": "failed",
        "bad": "in_flight",
    }
    assert [row[1:4] for row in rows(engine, failures_by_reason)] == [("prov-a", "http 400", 2)]
    assert sum(row[8] for row in rows(engine, delivery_stats_hourly)) == 3  # failed_permanent


def test_a_rebuild_parks_the_same_events_and_builds_the_same_tables(pg: tuple[MessageStore, Engine]) -> None:
    # Given read models that followed a log with poison events of both kinds
    store, engine = pg
    commit(store, *(message(f"m-{i}", at=i) for i in range(30)))
    commit(store, message("bad-c", correlation_id=NUL), message("bad-r", reason=f"x{NUL}"))
    commit(store, *(message(f"n-{i}", at=i, reason="http 400" if i % 3 else None) for i in range(30)))
    follow(store, engine, batch=16)
    tables = [table for p in all_projections() for table in p.tables]
    followed = {table.name: rows(engine, table) for table in tables}
    followed_parks = parked(engine)
    assert len(followed_parks) == 3

    # When every read model is rebuilt, in one process and then in two
    for workers in (1, 2):
        ShadowRebuild(store, engine, all_projections(), batch=7, workers=workers).run()

        # Then the tables and the parked events are those of the live followers, once each
        assert {table.name: rows(engine, table) for table in tables} == followed
        assert parked(engine) == followed_parks

    # And a rebuild of one read model replaces its own parked events only
    ShadowRebuild(store, engine, [MessageStatusProjection()], name="message_status").run()
    assert parked(engine) == followed_parks


class RefusingStatus:
    """message_status that writes, then fails with a data error, for every batch holding ``bad``'s events."""

    name = "message_status"

    def __init__(self, bad: str, inner: MessageStatusProjection | None = None) -> None:
        self.bad, self.inner = bad, inner or MessageStatusProjection()

    @property
    def tables(self) -> list[Table]:
        return self.inner.tables

    def retarget(self, tables: dict[str, Table]) -> RefusingStatus:
        return RefusingStatus(self.bad, self.inner.retarget(tables))

    def clear(self, connection: Connection) -> None:
        self.inner.clear(connection)

    def prepare(self, connection: Connection, events: Any, history: History) -> Write:
        write = self.inner.prepare(connection, events, history)
        refuse = any(e.originator_id == Message.create_id(self.bad) for e in events)

        def write_then_refuse(connection: Connection) -> None:
            write(connection)  # written, then refused: the refusal must take the writes back
            if refuse:
                raise ValueError("cannot store this value")

        return write_then_refuse


def test_a_runner_of_several_read_models_parks_an_event_only_for_the_one_that_refuses_it(
    db: tuple[MessageStore, Engine],
) -> None:
    # Given one runner keeping every read model (as a rebuild of them all does), one of which
    # refuses a message's events after writing them
    from adapters.stats_view import DeliveryStatsProjection, FailureReasonsProjection

    store, engine = db
    commit(store, message("ok-1"), message("bad"), message("ok-2", reason="http 400"))
    projections: list[Projection] = [
        RefusingStatus("bad"),
        DeliveryStatsProjection(),
        FailureReasonsProjection(),
    ]
    runner = ProjectionRunner(store, engine, projections, name="all", batch=4)

    # When it catches up
    assert runner.catch_up() == 9

    # Then that read model parked the message's three events, with none of its writes kept;
    # the others applied them, and the position is the head
    bad = [
        position_of(store, "bad", kind) for kind in (Message.Received, Message.Attempted, Message.Delivered)
    ]
    assert parked(engine) == [("message_status", at, "bad") for at in bad]
    assert {row[1] for row in rows(engine, message_status)} == {"ok-1", "ok-2"}
    assert sum(row[3] for row in rows(engine, delivery_stats_hourly)) == 3
    assert sum(row[5] for row in rows(engine, delivery_stats_hourly)) == 2  # delivered, "bad" included
    assert runner.position() == store.max_position() and runner.parked == 3


class Commits:
    """Counts the transactions an engine commits."""

    def __init__(self, engine: Engine) -> None:
        self.count = 0
        event.listen(engine, "commit", self._commit)

    def _commit(self, _connection: Any) -> None:
        self.count += 1


def test_a_batch_stays_one_transaction_and_a_poison_event_costs_a_few_more(
    pg: tuple[MessageStore, Engine],
) -> None:
    # Given 256 messages (768 events), one of them poison
    store, engine = pg
    commit(store, *(message(f"m-{i}", at=i) for i in range(128)))
    commit(store, message("bad", correlation_id=NUL))
    commit(store, *(message(f"n-{i}", at=i) for i in range(127)))
    runner = ProjectionRunner(store, engine, [MessageStatusProjection()], name="message_status", batch=1000)
    commits = Commits(engine)

    # When one step applies them all
    assert runner.step() == 768

    # Then the failed batch was split, not replayed event by event: about two commits a halving
    assert commits.count <= 2 * math.ceil(math.log2(768)) + 2
    assert len(parked(engine)) == 1 and len(rows(engine, message_status)) == 255

    # And a batch without poison is one transaction
    commit(store, *(message(f"p-{i}", at=i) for i in range(10)))
    before = commits.count
    assert runner.step() == 30
    assert commits.count - before == 1


class LosingConnection:
    """message_status whose writes fail as if the database connection dropped, until healed."""

    name = "message_status"

    def __init__(self) -> None:
        self.inner = MessageStatusProjection()
        self.down = True

    @property
    def tables(self) -> list[Table]:
        return self.inner.tables

    def retarget(self, tables: dict[str, Table]) -> Any:
        return self.inner.retarget(tables)

    def clear(self, connection: Connection) -> None:
        self.inner.clear(connection)

    def prepare(self, connection: Connection, events: Any, history: History) -> Write:
        write = self.inner.prepare(connection, events, history)

        def write_or_fail(connection: Connection) -> None:
            if self.down:
                raise OperationalError("UPDATE message_status", {}, ConnectionResetError("server closed"))
            write(connection)

        return write_or_fail


def test_an_outage_is_raised_and_retried_and_nothing_is_parked(db: tuple[MessageStore, Engine]) -> None:
    # Given read models whose database connection keeps dropping
    store, engine = db
    commit(store, message("a"), message("b"), message("c"))
    flaky = LosingConnection()
    runner = ProjectionRunner(store, engine, [flaky], name="message_status")

    # When it steps: the error is raised, the position stays, nothing is parked
    for _ in range(2):
        with pytest.raises(OperationalError):
            runner.step()
        with pytest.raises(OperationalError):
            step_together(store, [runner])
    assert runner.position() == 0 and parked(engine) == []

    # Then once the connection is back, every event is applied
    flaky.down = False
    assert runner.catch_up() == 9
    assert len(rows(engine, message_status)) == 3 and parked(engine) == []


def test_two_followers_racing_over_poison_events_park_each_once(pg: tuple[MessageStore, Engine]) -> None:
    # Given a log with two poison events, and two followers (two nodes) stepping all read models
    store, engine = pg
    commit(store, *(message(f"m-{i}", at=i) for i in range(100)))
    commit(store, message("bad-1", correlation_id=NUL))
    commit(store, *(message(f"n-{i}", at=i) for i in range(100)))
    commit(store, message("bad-2", reason=NUL))
    errors: list[BaseException] = []

    def run() -> None:
        try:
            follow(store, engine, batch=40)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)

    # Then each poison event is parked once per follower that cannot take it, and each row is right
    assert not errors
    received, failed = (
        position_of(store, "bad-1", Message.Received),
        position_of(store, "bad-2", Message.Failed),
    )
    assert parked(engine) == [
        ("failures_by_reason", failed, "bad-2"),
        ("message_status", received, "bad-1"),
        ("message_status", failed, "bad-2"),
    ]
    assert len(rows(engine, message_status)) == 201
    statuses = follower_status(store, engine)
    assert {s.name: s.parked for s in statuses} == {
        "message_status": 2,
        "delivery_stats_hourly": 0,
        "delivery_stats_minutely": 0,
        "failures_by_reason": 1,
        "events_exchange": 0,
    }
    latest = next(s for s in statuses if s.name == "message_status").latest_parked
    assert [item.position for item in latest] == sorted({received, failed}, reverse=True)


# --- the events exchange --------------------------------------------------------------------


@pytest.fixture
def subscriber(rabbit: Any, prefix: str) -> Iterator[Any]:
    """A queue bound to every message event of the test's exchange; yields a function that drains it."""
    rabbit.exchange_declare(f"{prefix}.events", exchange_type="topic", durable=True)
    queue = rabbit.queue_declare("", exclusive=True).method.queue
    rabbit.queue_bind(queue, f"{prefix}.events", routing_key="message.#")

    def drain() -> list[tuple[Any, dict[str, Any], bytes]]:
        got: list[tuple[Any, dict[str, Any], bytes]] = []
        while True:
            method, properties, body = rabbit.basic_get(queue, auto_ack=True)
            if method is None:
                return got
            got.append((properties, json.loads(body), body))

    yield drain


def publish_all(publisher: EventsExchangePublisher) -> int:
    total = 0
    while count := publisher.publish_pending():
        total += count
    return total


def test_a_correlation_id_too_long_for_an_amqp_property_is_published_in_the_body(
    db: tuple[MessageStore, Engine], amqp_url: str, prefix: str, subscriber: Any
) -> None:
    # Given a message whose correlation id is 384 UTF-8 bytes, between two ordinary ones
    store, engine = db
    commit(store, message("ok-1"), message("long", correlation_id=LONG_CORRELATION_ID), message("ok-2"))
    publisher = EventsExchangePublisher(store, engine, amqp_url, Topology(prefix))
    try:
        # When
        assert publish_all(publisher) == 9
    finally:
        publisher.close()

    # Then every event is published; the long id is in the body, not in the property
    got = subscriber()
    assert len(got) == 9
    long = [(p, b) for p, b, _raw in got if b["message_id"] == "long"]
    assert len(long) == 3
    assert all(b["correlation_id"] == LONG_CORRELATION_ID and p.correlation_id is None for p, b in long)
    assert all(p.correlation_id == b["correlation_id"] for p, b, _raw in got if b["message_id"] != "long")
    assert publisher.position() == store.max_position() and parked(engine) == []


def test_an_event_the_exchange_cannot_encode_is_parked_and_its_batch_published(
    db: tuple[MessageStore, Engine], amqp_url: str, prefix: str, subscriber: Any, monkeypatch: Any
) -> None:
    # Given an event whose record will not encode (say, a value from an older version)
    store, engine = db
    commit(store, message("ok-1"), message("bad"), message("ok-2"))
    bad = Message.create_id("bad")
    record = events_exchange.published_record

    def refuse(event: DomainEvent) -> dict[str, Any]:
        if event.originator_id == bad and isinstance(event, Message.Attempted):
            raise ValueError("will not encode")
        return record(event)

    monkeypatch.setattr(events_exchange, "published_record", refuse)
    publisher = EventsExchangePublisher(store, engine, amqp_url, Topology(prefix))
    try:
        # When
        assert publish_all(publisher) == 9
    finally:
        publisher.close()

    # Then the other eight are published, in order, once; that one is parked
    got = subscriber()
    assert [(b["message_id"], b["type"]) for _p, b, _raw in got] == [
        (name, kind)
        for name in ("ok-1", "bad", "ok-2")
        for kind in ("Received", "Attempted", "Delivered")
        if (name, kind) != ("bad", "Attempted")
    ]
    assert parked(engine) == [("events_exchange", position_of(store, "bad", Message.Attempted), "bad")]
    assert publisher.parked == 1 and publisher.position() == store.max_position()


def test_an_unreachable_broker_is_raised_and_nothing_is_parked(
    db: tuple[MessageStore, Engine], prefix: str
) -> None:
    store, engine = db
    commit(store, message("a"))
    publisher = EventsExchangePublisher(store, engine, "amqp://guest:guest@127.0.0.1:1/%2F", Topology(prefix))
    for _ in range(2):
        with pytest.raises(BrokerUnavailableError):
            publisher.publish_pending()
    assert publisher.position() == 0 and parked(engine) == []


def test_the_exchange_masks_the_sender_and_publishes_metadata_keys_only(
    db: tuple[MessageStore, Engine], amqp_url: str, prefix: str, subscriber: Any
) -> None:
    # Given a request with a sender and metadata
    store, engine = db
    sender, metadata = "+447700900999", {"campaign": "spring-sale", "tier": "gold-member"}
    commit(store, message("m", sender=sender, metadata=metadata))
    publisher = EventsExchangePublisher(store, engine, amqp_url, Topology(prefix))
    try:
        publish_all(publisher)
    finally:
        publisher.close()

    # Then the Received event carries the sender masked like the recipient, and metadata keys only
    got = subscriber()
    received = next(b for _p, b, _raw in got if b["type"] == "Received")
    assert received["from"] == mask_address(sender) != sender
    assert received["to"] == mask_address("+447700900123")
    assert received["metadata_keys"] == ["campaign", "tier"] and "metadata" not in received
    for _p, _b, raw in got:
        assert sender.encode() not in raw and b"spring-sale" not in raw and b"gold-member" not in raw
        assert b"secret body" not in raw


# --- the failed-queue outbox ----------------------------------------------------------------


class Refusing:
    """A dead-letter queue that cannot encode one message's request (a data error), or is down."""

    def __init__(self, refuse: str) -> None:
        self.refuse, self.down = refuse, False
        self.got: list[str] = []

    def publish_failed(self, request: SendRequest, headers: dict[str, str]) -> None:
        if self.down:
            raise BrokerUnavailableError("StreamLostError: connection reset")
        if request.message_id == self.refuse:
            raise ValueError("cannot encode this request")
        self.got.append(request.message_id)


def test_a_failure_the_dead_letter_queue_cannot_encode_is_parked_and_the_others_published(
    db: tuple[MessageStore, Engine],
) -> None:
    # Given an outbox whose queue refuses one failure's data, and then is down for a while
    store, engine = db
    queue = Refusing("f-2")
    outbox = FailedOutbox(store, engine, queue)
    commit(store, *(message(f"f-{i}", reason="http 400") for i in range(1, 4)))

    # When it publishes
    assert outbox.publish_pending() == 3

    # Then the others are published and that one is parked; the position is past them all
    assert queue.got == ["f-1", "f-3"]
    assert parked(engine) == [("failed_queue", position_of(store, "f-2", Message.Failed), "f-2")]
    assert outbox.position() == store.max_position() and outbox.parked == 1

    # And a queue that is down is an outage: raised, the position stays, nothing more is parked
    commit(store, message("f-4", reason="http 400"))
    queue.down = True
    with pytest.raises(BrokerUnavailableError):
        outbox.publish_pending()
    assert len(parked(engine)) == 1 and (outbox.position() or 0) < store.max_position()
    queue.down = False
    assert outbox.publish_pending() == 1 and queue.got[-1] == "f-4"


def test_a_failure_with_a_correlation_id_too_long_for_amqp_does_not_stop_the_failed_queue(
    db: tuple[MessageStore, Engine], amqp_url: str, prefix: str, rabbit: Any
) -> None:
    # Given the real failed queue, and a failure whose correlation id is 384 UTF-8 bytes
    store, engine = db
    Topology(prefix).declare(rabbit)
    publisher = RabbitFailurePublisher(amqp_url, Topology(prefix))
    outbox = FailedOutbox(store, engine, publisher)
    commit(store, message("f-1", reason="r"), message("long", reason="r", correlation_id=LONG_CORRELATION_ID))
    commit(store, message("f-2", reason="r"))
    try:
        # When it publishes
        settled = 0
        while count := outbox.publish_pending():
            settled += count
    finally:
        publisher.close()

    # Then nothing holds it up: the others are in the queue, and the long one is either there
    # with its whole correlation id in the body, or parked (while the publisher sets the property)
    assert settled == 3 and outbox.position() == store.max_position()
    bodies = {}
    while (got := rabbit.basic_get(f"{prefix}.failed", auto_ack=True))[0] is not None:
        request = json.loads(got[2])
        bodies[request["message_id"]] = request
    assert {"f-1", "f-2"} <= set(bodies)
    if "long" in bodies:
        assert bodies["long"]["correlation_id"] == LONG_CORRELATION_ID and parked(engine) == []
    else:
        assert parked(engine) == [("failed_queue", position_of(store, "long", Message.Failed), "long")]


def test_status_lists_the_failed_queue_with_its_parked_events(db: tuple[MessageStore, Engine]) -> None:
    store, engine = db
    outbox = FailedOutbox(store, engine, Refusing("f-1"))
    commit(store, message("f-1", reason="r"))
    outbox.publish_pending()
    row = next(s for s in follower_status(store, engine) if s.name == "failed_queue")
    assert (row.parked, row.lag_known, row.position) == (1, False, store.max_position())
    assert (row.as_json()["lag_events"], row.as_json()["lag_seconds"]) == (None, None)
    assert row.latest_parked[0].message_id == "f-1" and "cannot encode" in row.latest_parked[0].error
    with engine.connect() as connection:
        assert read_position(connection, "failed_queue") == store.max_position()
    assert json.loads(json.dumps(row.as_json()))["latest_parked"][0]["follower"] == "failed_queue"


def test_pika_refuses_a_correlation_id_over_255_bytes(amqp_url: str) -> None:
    """The premise: pika raises (before sending anything) and the channel stays usable."""
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = connection.channel()
        with pytest.raises(pika.exceptions.ShortStringTooLong):
            channel.basic_publish(
                "", "nowhere", b"x", pika.BasicProperties(correlation_id=LONG_CORRELATION_ID)
            )
        channel.basic_publish("", "nowhere", b"x", pika.BasicProperties(correlation_id="short"))
        assert channel.is_open
    finally:
        connection.close()
