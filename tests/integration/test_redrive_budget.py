"""Redrive against the real RabbitMQ and both stores: the automatic redriver's budget holds across
restarts and processes (it is counted from each message's history), entries that are not redriven
stay on the queue with their AMQP properties, and the limit counts only messages redriven."""

from __future__ import annotations

import io
import json
import queue
import threading
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pika
import pykka
import pytest

from adapters.event_store import Change, MessageNotFoundError, MessageStore
from adapters.rabbitmq import Topology
from adapters.rabbitmq_failed import FailedQueueReader, RabbitFailurePublisher
from domain.backoff import BackoffPolicy
from domain.dead_letter import failed_request, failure_headers
from domain.message import AUTO_REDRIVE, FAILED, RECEIVED, Message
from smeg_actors.actors import redrive as redrive_module
from smeg_actors.actors.messages import DeliverMessages, ProviderRecovered
from smeg_actors.actors.redrive import RedriverActor, redrive
from smeg_actors.actors.supervisor import Children
from smeg_actors.runtime.clock import utc_now
from tests.integration.backends import Backend
from tests.logcapture import captured_logs
from tests.waiting import wait_until

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)
ONE_ATTEMPT = BackoffPolicy(initial=60, factor=3, max_delay=3600, max_attempts=1)
TO, BODY = "+447700900123", "Your code is 123456"
WAIT = 15.0


class Dispatcher(pykka.ThreadingActor):
    """Stands in for the dispatcher: remembers what it was told to deliver."""

    def __init__(self, told: queue.Queue[Any]) -> None:
        super().__init__()
        self.told = told

    def on_receive(self, message: Any) -> None:
        self.told.put(message)


class Entry:
    """One entry read off the failed queue: its body's id, AMQP properties and delivery flags."""

    def __init__(self, method: Any, properties: pika.BasicProperties, body: bytes) -> None:
        self.id = json.loads(body)["message_id"]
        self.message_id, self.correlation_id = properties.message_id, properties.correlation_id
        self.headers = dict(properties.headers or {})
        self.redelivered = bool(method.redelivered)


def take_all(amqp_url: str, prefix: str) -> list[Entry]:
    """Every entry on the failed queue, in order; they are consumed (the test is over with them)."""
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = connection.channel()

        def everything_there() -> list[Entry]:
            found = []
            while (got := channel.basic_get(f"{prefix}.failed", auto_ack=True))[0] is not None:
                found.append(Entry(*got))
            return found

        # kept entries come back asynchronously
        return wait_until(everything_there, WAIT, message="nothing on the failed queue")
    finally:
        connection.close()


def fail(
    store: MessageStore, publisher: RabbitFailurePublisher, message_id: str, *, permanent: bool = False
) -> None:
    """Receive it (or attempt it again), fail it, publish the failure as the outbox does."""
    try:
        message = store.get(Message.create_id(message_id))
    except MessageNotFoundError:
        message = Message.receive(
            message_id=message_id,
            channel="sms",
            to=TO,
            body=BODY,
            correlation_id=f"corr-{message_id}",
            now=NOW,
        )
    assert message.status == RECEIVED
    message.start_attempt("prov-a", now=NOW)
    if permanent:
        message.record_permanent_failure("http 400", error="E", now=NOW, status_code=400)
    else:
        message.record_transient_failure("http 503", error="E", policy=ONE_ATTEMPT, now=NOW, status_code=503)
    assert message.status == FAILED
    [outcome] = store.commit([Change(load=lambda: store.get(message.id), cached=message)])
    assert outcome.saved
    publisher.publish_failed(failed_request(message), dict(failure_headers(message)))


@pytest.fixture
def publisher(amqp_url: str, prefix: str) -> Iterator[RabbitFailurePublisher]:
    publisher = RabbitFailurePublisher(amqp_url, Topology(prefix))
    FailedQueueReader(amqp_url, Topology(prefix)).close()  # declares the queues
    yield publisher
    publisher.close()


@pytest.fixture
def logged(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """What redrive writes at info and above, rendered as the service renders it."""
    with captured_logs("info", redrive_module) as stream:
        yield stream


class Process:
    """One ``smeg run``'s automatic redriver, on a store of its own, started fresh."""

    def __init__(self, backend: Backend, amqp_url: str, prefix: str) -> None:
        self.store = backend.open()
        self.told: queue.Queue[Any] = queue.Queue()
        self.children = Children()
        self.children.set("dispatcher", Dispatcher.start(self.told))
        self.closed = threading.Event()
        closed = self.closed

        class Reader(FailedQueueReader):
            def close(self) -> None:
                super().close()
                closed.set()

        self.redriver = RedriverActor.start(
            "redriver",
            None,
            store=self.store,
            open_reader=lambda: Reader(amqp_url, Topology(prefix)),
            children=self.children,
            clock=utc_now,
            rate=1000,
            cooldown=0,
        )

    def provider_recovered(self) -> None:
        """What a worker says when a retried message is delivered; wait for the redrive to end."""
        self.closed.clear()
        self.redriver.tell(ProviderRecovered("prov-a"))
        assert self.closed.wait(WAIT)

    def stop(self) -> None:
        self.redriver.stop()
        self.children.get("dispatcher").stop()


def test_the_automatic_redriver_stops_after_3_cycles_of_a_message_across_restarts_and_processes(
    backend: Backend, amqp_url: str, prefix: str, publisher: RabbitFailurePublisher, logged: io.StringIO
) -> None:
    # Given a message whose provider always answers 503, exhausted and on the failed queue
    worker_store = backend.open()
    fail(worker_store, publisher, "down")
    # When providers recover again and again, each time seen by another process (or a restart),
    # and each redriven cycle fails again (the worker's part, played here)
    redriven = []
    for _ in range(6):
        process = Process(backend, amqp_url, prefix)
        try:
            process.provider_recovered()
        finally:
            process.stop()
        dispatched = not process.told.empty()
        redriven.append(dispatched)
        if dispatched:
            assert isinstance(process.told.get(), DeliverMessages)
            fail(worker_store, publisher, "down")
        assert depth(amqp_url, prefix, 1) == 1
    # Then it got three automatic cycles (the default budget), no more, and it stays Failed
    history = worker_store.history(Message.create_id("down"))
    assert [e.requested_by for e in history if isinstance(e, Message.RetryRequested)] == [AUTO_REDRIVE] * 3
    assert redriven == [True, True, True, False, False, False]
    assert worker_store.get(Message.create_id("down")).status == FAILED
    # and one warning named it, with the cycles
    lines = [json.loads(line) for line in logged.getvalue().splitlines()]
    [warning] = [line for line in lines if line["event"] == "auto_redrive_budget_spent"]
    assert (warning["level"], warning["message_id"], warning["cycles"]) == ("warning", "down", 3)
    assert TO not in logged.getvalue() and BODY not in logged.getvalue()
    # and its entry waits on the failed queue for a person, with its AMQP properties
    [entry] = take_all(amqp_url, prefix)
    assert (entry.id, entry.message_id, entry.correlation_id) == ("down", "down", "corr-down")
    assert entry.headers["x-smeg-permanent"] == "false"
    assert entry.headers["x-smeg-reason"] == "http 503"
    assert entry.headers["x-smeg-auto-redrives"] == "3"


def test_a_person_can_still_redrive_a_message_past_the_automatic_budget(
    backend: Backend, amqp_url: str, prefix: str, publisher: RabbitFailurePublisher
) -> None:
    # Given a message past an automatic budget of 1
    store = backend.open()
    fail(store, publisher, "m")
    for _ in range(2):
        reader = FailedQueueReader(amqp_url, Topology(prefix))
        try:
            report = redrive(store, reader, clock=utc_now, budget=1)
        finally:
            reader.close()
        if report.redriven:
            fail(store, publisher, "m")
        assert depth(amqp_url, prefix, 1) == 1
    assert report.over_budget == ["m"]
    # When a person runs smeg redrive
    reader = FailedQueueReader(amqp_url, Topology(prefix))
    try:
        report = redrive(store, reader, clock=utc_now)
    finally:
        reader.close()
    # Then
    assert report.redriven == ["m"]
    assert store.get(Message.create_id("m")).status == RECEIVED
    assert depth(amqp_url, prefix, 0) == 0


def depth(amqp_url: str, prefix: str, expected: int) -> int:
    """The failed queue's depth once it is ``expected`` (entries handed back return asynchronously);
    AssertionError if it is not within WAIT."""
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = connection.channel()

        def found() -> int:
            return int(channel.queue_declare(f"{prefix}.failed", passive=True).method.message_count)

        wait_until(lambda: found() == expected, WAIT, message=lambda: f"the failed queue holds {found()}")
        return expected
    finally:
        connection.close()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[MessageStore]:
    store = MessageStore(f"sqlite:///{tmp_path}/s.db")
    yield store
    store.close()


def test_kept_entries_stay_on_the_queue_with_their_properties_and_the_limit_counts_redriven_only(
    store: MessageStore, amqp_url: str, prefix: str, publisher: RabbitFailurePublisher
) -> None:
    # Given two permanent failures ahead of two exhausted ones
    for name in ("p1", "p2"):
        fail(store, publisher, name, permanent=True)
    for name in ("e1", "e2"):
        fail(store, publisher, name)
    # When a person redrives one at a time, twice (smeg redrive --limit 1)
    reports = []
    for left in (3, 2):
        reader = FailedQueueReader(amqp_url, Topology(prefix))
        try:
            reports.append(redrive(store, reader, clock=utc_now, limit=1))
        finally:
            reader.close()
        assert depth(amqp_url, prefix, left) == left
    # Then each run redrove one message: the permanent ones did not use up the limit
    assert [r.redriven for r in reports] == [["e1"], ["e2"]]
    assert reports[0].permanent == ["p1", "p2"]
    # And the permanent ones are still there, in their order, handed back rather than published
    # again (a quorum queue puts what is handed back behind what waits), with their AMQP message
    # id, correlation id and headers
    entries = take_all(amqp_url, prefix)
    assert [e.id for e in entries] == ["p1", "p2"]
    assert [(e.message_id, e.correlation_id) for e in entries] == [("p1", "corr-p1"), ("p2", "corr-p2")]
    assert all(e.redelivered for e in entries)
    assert all(e.headers["x-smeg-permanent"] == "true" for e in entries)


def test_an_entry_kept_run_after_run_is_republished_before_a_delivery_limit_could_drop_it(
    store: MessageStore, amqp_url: str, prefix: str, publisher: RabbitFailurePublisher
) -> None:
    # Given a permanent failure, and a reader that republishes what came back twice
    fail(store, publisher, "p", permanent=True)
    # When three redrives keep it
    for _ in range(3):
        reader = FailedQueueReader(amqp_url, Topology(prefix), republish_after=2)
        try:
            assert redrive(store, reader, clock=utc_now).permanent == ["p"]
        finally:
            reader.close()
        assert depth(amqp_url, prefix, 1) == 1
    # Then the third republished it: a fresh entry (its count of returns from zero), still one,
    # with its AMQP properties and headers
    [entry] = take_all(amqp_url, prefix)
    assert not entry.redelivered
    assert int(entry.headers.get("x-delivery-count", 0)) == 0
    assert (entry.id, entry.message_id, entry.correlation_id) == ("p", "p", "corr-p")
    assert (entry.headers["x-smeg-permanent"], entry.headers["x-smeg-reason"]) == ("true", "http 400")
