"""The dead-letter outbox publishes every Failed event of the log, at least once, whoever dies."""

from __future__ import annotations

import threading
from datetime import datetime, timezone
from typing import Any

import pytest
from sqlalchemy import Engine, insert

from adapters.event_store import Change, MessageStore
from adapters.failed_outbox import FailedOutbox
from adapters.projections import tracking
from adapters.sql import make_engine, read_models_beside
from domain.message import Message
from domain.request import SendRequest

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)


class Recorder:
    """A dead-letter queue that remembers what it got, and can fail or stall on demand."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.got: list[tuple[str, dict[str, str]]] = []
        self.fail_after = fail_after
        self.hold: threading.Event | None = None
        self.holding = threading.Event()

    def publish_failed(self, request: SendRequest, headers: dict[str, str]) -> None:
        if self.hold is not None:
            self.holding.set()
            self.hold.wait(10)
        if self.fail_after is not None and len(self.got) >= self.fail_after:
            raise ConnectionError("broker gone")
        self.got.append((request.message_id, headers))


@pytest.fixture
def db(store_and_engine: tuple[MessageStore, Engine]) -> tuple[MessageStore, Engine]:
    return store_and_engine


def fail(store: MessageStore, *names: str, permanent: bool = True) -> None:
    """Messages received, attempted and failed for good; plus one delivered, for contrast."""
    changes = []
    for name in names:
        message = Message.receive(
            message_id=name, channel="sms", to="+447700900123", body="hi", correlation_id=f"c-{name}", now=NOW
        )
        message.start_attempt("sim", now=NOW)
        message.record_permanent_failure("invalid_recipient", error="E", now=NOW, status_code=400)
        changes.append(Change(load=lambda m=message: m))
    delivered = Message.receive(
        message_id=f"ok-{names[0]}", channel="im", to="u1", body="hi", correlation_id="c", now=NOW
    )
    delivered.start_attempt("sim", now=NOW)
    delivered.record_delivery("p-1", now=NOW, latency_ms=1.0)
    changes.append(Change(load=lambda: delivered))
    assert all(outcome.saved for outcome in store.commit(changes))


def test_failures_left_unpublished_by_a_dead_process_are_published_by_the_next(db: Any) -> None:
    # Given an outbox that started (its position is set) and died before publishing
    store, engine = db
    FailedOutbox(store, engine, Recorder())
    fail(store, "f1", "f2", "f3")

    # When the next process's outbox runs
    queue = Recorder()
    outbox = FailedOutbox(store, engine, queue, batch=4)
    published = 0
    while step := outbox.publish_pending():
        published += step

    # Then each failure is on the queue once, in log order, with its request and reasons
    assert published == 3
    assert [name for name, _ in queue.got] == ["f1", "f2", "f3"]
    assert queue.got[0][1] == {
        "x-smeg-reason": "invalid_recipient",
        "x-smeg-attempts": "1",
        "x-smeg-permanent": "true",
        "x-smeg-provider": "sim",
    }
    assert outbox.position() == store.max_position()
    assert outbox.publish_pending() == 0


def test_a_broker_failure_mid_batch_moves_nothing_and_the_batch_is_published_again(db: Any) -> None:
    store, engine = db
    FailedOutbox(store, engine, Recorder())
    fail(store, "g1", "g2", "g3")
    flaky = Recorder(fail_after=2)
    outbox = FailedOutbox(store, engine, flaky)
    start = outbox.position()

    with pytest.raises(ConnectionError):
        outbox.publish_pending()
    assert outbox.position() == start

    flaky.fail_after = None
    assert outbox.publish_pending() == 3
    # at least once: the two published before the failure come again, none is missing
    assert [name for name, _ in flaky.got] == ["g1", "g2", "g1", "g2", "g3"]


def test_a_store_without_a_position_starts_at_the_head_and_does_not_republish_history(db: Any) -> None:
    store, engine = db
    fail(store, "old")
    queue = Recorder()
    outbox = FailedOutbox(store, engine, queue)
    assert outbox.position() == store.max_position()
    assert outbox.publish_pending() == 0
    fail(store, "new")
    assert outbox.publish_pending() == 1
    assert [name for name, _ in queue.got] == ["new"]


def test_two_nodes_do_not_publish_the_same_batch(db: tuple[MessageStore, Engine]) -> None:
    # Given two nodes' (or processes') outboxes on one store, and failures to publish
    store, engine = db
    first_queue, second_queue = Recorder(), Recorder()
    first = FailedOutbox(store, engine, first_queue)
    second = FailedOutbox(store, engine, second_queue)
    fail(store, "n1", "n2")

    # When the first is mid-batch (holding the position) and the second runs meanwhile
    first_queue.hold = threading.Event()
    runner = threading.Thread(target=first.publish_pending)
    runner.start()
    assert first_queue.holding.wait(10)
    assert second.publish_pending() == 0
    first_queue.hold.set()
    runner.join(10)

    # Then the batch went out once, by the first
    assert [name for name, _ in first_queue.got] == ["n1", "n2"]
    assert second_queue.got == []
    assert second.publish_pending() == 0


def test_writes_to_the_read_model_file_during_a_publication_do_not_stop_it(tmp_path: Any) -> None:
    # Given SQLite, where the projector child writes the read-model file all the time
    url = f"sqlite:///{tmp_path}/smeg.db"
    store, engine = MessageStore(url), make_engine(read_models_beside(url))
    queue = Recorder()
    outbox = FailedOutbox(store, engine, queue)
    fail(store, "w1", "w2")
    queue.hold = threading.Event()
    results: list[int] = []
    runner = threading.Thread(target=lambda: results.append(outbox.publish_pending()))
    runner.start()
    assert queue.holding.wait(10)

    # When another writer commits to the same file while the batch is being published
    with engine.begin() as connection:
        connection.execute(insert(tracking).values(projection="someone_else", position=1))
    queue.hold.set()
    runner.join(10)

    # Then the batch went out and the position moved past it
    assert results == [2]
    assert [name for name, _ in queue.got] == ["w1", "w2"]
    assert outbox.position() == store.max_position()
    store.close()
    engine.dispose()
