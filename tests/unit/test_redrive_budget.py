"""Redrive's rules, on the in-memory event store (tests/fakes.py) and an in-memory failed queue: the
automatic budget (counted from each message's history), a person's retry always working, and what
happens to entries that are not redriven (kept on the queue, never republished run after run; the
limit counts redriven only). The same against the real RabbitMQ: tests/integration/test_redrive_budget.py."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any, cast

import pytest

from adapters.rabbitmq_failed import FailedEntry, FailedQueueReader
from domain.backoff import BackoffPolicy
from domain.dead_letter import failed_request, failure_headers
from domain.message import AUTO_REDRIVE, FAILED, RECEIVED, Message
from domain.ports import Change, MessageNotFoundError
from smeg_actors.actors import redrive as redrive_module
from smeg_actors.actors.redrive import BUDGET_HEADER, RedriveReport, redrive
from smeg_actors.runtime.config import load_settings
from tests.fakes import InMemoryMessageStore
from tests.logcapture import captured_logs

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)
ONE_ATTEMPT = BackoffPolicy(initial=60, factor=3, max_delay=3600, max_attempts=1)
TO, BODY = "+447700900123", "Your code is 123456"


class FakeFailedQueue:
    """The failed queue's reader, in memory: entries in order; kept ones are handed back at
    ``release``, behind those waiting (as RabbitMQ's quorum queues do); republications recorded."""

    def __init__(self) -> None:
        self.entries: list[FailedEntry] = []
        self.taken: list[FailedEntry] = []
        self.kept: list[FailedEntry] = []
        self.republished: list[FailedEntry] = []
        self.tags = 0

    def put(self, body: bytes, headers: dict[str, Any], *, message_id: str | None = None) -> None:
        self.tags += 1
        self.entries.append(FailedEntry(self.tags, body, dict(headers), f"corr-{message_id}", message_id))

    def depth(self) -> int:
        return len(self.entries)

    def get(self) -> FailedEntry | None:
        if not self.entries:
            return None
        entry = self.entries.pop(0)
        self.taken.append(entry)
        return entry

    def ack(self, entry: FailedEntry) -> None:
        self.taken.remove(entry)

    def keep(self, entry: FailedEntry) -> None:
        self.kept.append(entry)

    def republish(self, entry: FailedEntry, *, headers: dict[str, Any] | None = None) -> None:
        self.taken.remove(entry)
        self.put(entry.body, entry.headers | (headers or {}), message_id=entry.message_id)
        self.republished.append(self.entries[-1])

    def release(self) -> None:
        for entry in self.kept:
            self.taken.remove(entry)
        self.entries.extend(self.kept)
        self.kept = []

    def ids(self) -> list[str]:
        return [json.loads(e.body)["message_id"] for e in self.entries]


@pytest.fixture
def store() -> InMemoryMessageStore:
    """The event store in memory (held to the real one by tests/integration/test_store_contract.py)."""
    return InMemoryMessageStore()


@pytest.fixture
def queue() -> FakeFailedQueue:
    return FakeFailedQueue()


def clock() -> datetime:
    return T0


def run(store: InMemoryMessageStore, queue: FakeFailedQueue, **options: Any) -> RedriveReport:
    """One redrive of the queue (by a person, or with ``budget=`` by the automatic redriver)."""
    options.setdefault("clock", clock)
    return redrive(store, cast(FailedQueueReader, queue), **options)


def fail(
    store: InMemoryMessageStore, queue: FakeFailedQueue, message_id: str, *, permanent: bool = False
) -> None:
    """Receive (first time) or attempt again, fail, and publish the failure as the outbox does."""
    try:
        message = store.get(Message.create_id(message_id))
        changes = [Change(load=lambda: store.get(message.id), cached=message)]
    except MessageNotFoundError:
        message = Message.receive(
            message_id=message_id,
            channel="sms",
            to=TO,
            body=BODY,
            correlation_id=f"corr-{message_id}",
            now=T0,
        )
        changes = [Change(load=lambda: message, cached=message)]
    assert message.status == RECEIVED
    message.start_attempt("prov-a", now=T0)
    if permanent:
        message.record_permanent_failure("http 400", error="E", now=T0, status_code=400)
    else:
        message.record_transient_failure("http 503", error="E", policy=ONE_ATTEMPT, now=T0, status_code=503)
    assert message.status == FAILED
    [outcome] = store.commit(changes)
    assert outcome.saved
    queue.put(
        failed_request(message).to_json(), dict(failure_headers(message)), message_id=message.message_id
    )


def retries(store: InMemoryMessageStore, message_id: str) -> list[str]:
    history = store.history(Message.create_id(message_id))
    return [e.requested_by for e in history if isinstance(e, Message.RetryRequested)]


@pytest.fixture
def logged(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """What redrive writes at warning and above, rendered as the service renders it."""
    with captured_logs("warning", redrive_module) as stream:
        yield stream


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


# --- the aggregate counts automatic cycles from its history --------------------------------


def test_automatic_retries_are_counted_from_the_history_and_a_persons_retry_resets_them() -> None:
    message = Message.receive(message_id="m", channel="sms", to=TO, body=BODY, correlation_id="c", now=T0)
    counts = []
    for requested_by in (AUTO_REDRIVE, AUTO_REDRIVE, "operator", AUTO_REDRIVE):
        message.start_attempt("p", now=T0)
        message.record_permanent_failure("x", error="E", now=T0)
        message.request_retry(requested_by, now=T0)
        counts.append(message.automatic_retries)
    assert counts == [1, 2, 0, 1]
    # and a replay of the events gives the same count (what a restarted process sees)
    replayed: Any = None
    for event in message.collect_events():
        replayed = event.mutate(replayed)
    assert replayed.automatic_retries == 1


# --- the automatic budget ------------------------------------------------------------------


def test_the_automatic_redriver_gives_a_message_at_most_its_budget_of_cycles_then_leaves_it_for_a_person(
    store: InMemoryMessageStore, queue: FakeFailedQueue, logged: io.StringIO
) -> None:
    # Given a message whose provider always fails, exhausted and on the failed queue
    fail(store, queue, "down")
    # When the automatic redriver runs again and again, each cycle failing again
    for _ in range(3):
        report = run(store, queue, budget=3)
        assert report.redriven == ["down"]
        fail(store, queue, "down")
    fourth = run(store, queue, budget=3)
    fifth = run(store, queue, budget=3)
    # Then three automatic cycles, no more, and it stays Failed
    assert retries(store, "down") == [AUTO_REDRIVE] * 3
    assert store.get(Message.create_id("down")).status == FAILED
    assert (fourth.redriven, fourth.over_budget) == ([], ["down"])
    assert (fifth.redriven, fifth.over_budget) == ([], ["down"])
    assert "kept 1 past the automatic budget" in fourth.summary()
    # and its entry stays on the queue for a person, marked once, with its AMQP message id
    assert queue.ids() == ["down"]
    [entry] = queue.entries
    assert (entry.headers[BUDGET_HEADER], entry.message_id, entry.correlation_id) == (
        "3",
        "down",
        "corr-down",
    )
    assert entry.headers["x-smeg-permanent"] == "false"
    assert len(queue.republished) == 1
    # and one warning says so, with the message id and the cycles
    [line] = [line for line in lines(logged) if line["event"] == "auto_redrive_budget_spent"]
    assert (line["level"], line["message_id"], line["cycles"], line["max_cycles"]) == (
        "warning",
        "down",
        3,
        3,
    )
    assert TO not in json.dumps(line) and BODY not in json.dumps(line)


def test_the_budget_counts_each_message_on_its_own(
    store: InMemoryMessageStore, queue: FakeFailedQueue
) -> None:
    # Given one message that spent a budget of 1, and a fresh one
    fail(store, queue, "spent")
    run(store, queue, budget=1)
    fail(store, queue, "spent")
    fail(store, queue, "fresh")
    # When
    report = run(store, queue, budget=1)
    # Then
    assert (report.redriven, report.over_budget) == (["fresh"], ["spent"])
    assert queue.ids() == ["spent"]


def test_a_persons_redrive_ignores_the_budget_and_gives_the_automatic_redriver_a_fresh_one(
    store: InMemoryMessageStore, queue: FakeFailedQueue
) -> None:
    # Given a message past an automatic budget of 1
    fail(store, queue, "m")
    run(store, queue, budget=1)
    fail(store, queue, "m")
    assert run(store, queue, budget=1).over_budget == ["m"]
    # When a person redrives it (smeg redrive)
    report = run(store, queue)
    # Then it gets its cycle, and its entry is done with
    assert report.redriven == ["m"]
    assert queue.entries == []
    # And when that cycle fails too, the automatic redriver may try once more
    fail(store, queue, "m")
    assert run(store, queue, budget=1).redriven == ["m"]
    assert retries(store, "m") == [AUTO_REDRIVE, "redrive", AUTO_REDRIVE]


def test_a_budget_of_zero_never_redrives_automatically(
    store: InMemoryMessageStore, queue: FakeFailedQueue
) -> None:
    fail(store, queue, "m")

    report = run(store, queue, budget=0)

    assert (report.redriven, report.over_budget) == ([], ["m"])
    assert retries(store, "m") == []


def test_the_setting_defaults_to_3_and_reads_the_environment() -> None:
    assert load_settings({}).redrive_max_cycles == 3
    assert load_settings({"SMEG_REDRIVE_MAX_CYCLES": "5"}).redrive_max_cycles == 5


# --- entries that are not redriven -----------------------------------------------------------


def test_permanent_failures_stay_on_the_queue_and_are_never_republished(
    store: InMemoryMessageStore, queue: FakeFailedQueue
) -> None:
    # Given permanent failures around an exhausted one
    fail(store, queue, "p1", permanent=True)
    fail(store, queue, "exhausted")
    fail(store, queue, "p2", permanent=True)
    # When a person redrives, twice
    first = run(store, queue)
    second = run(store, queue)
    # Then the permanent ones are kept each time, in their order, and never republished
    assert (first.redriven, first.permanent) == (["exhausted"], ["p1", "p2"])
    assert (second.redriven, second.permanent) == ([], ["p1", "p2"])
    assert queue.ids() == ["p1", "p2"]
    assert queue.republished == []


def test_the_limit_counts_only_messages_redriven_not_those_kept(
    store: InMemoryMessageStore, queue: FakeFailedQueue
) -> None:
    # Given five permanent failures ahead of two exhausted ones
    for n in range(5):
        fail(store, queue, f"p{n}", permanent=True)
    fail(store, queue, "e1")
    fail(store, queue, "e2")
    # When
    report = run(store, queue, limit=1)
    # Then one message is redriven, the first exhausted one, and every other entry stays
    assert report.redriven == ["e1"]
    assert report.permanent == [f"p{n}" for n in range(5)]
    assert sorted(queue.ids()) == sorted([*(f"p{n}" for n in range(5)), "e2"])
    assert queue.republished == []
    # And the next run redrives the next one
    assert run(store, queue, limit=1).redriven == ["e2"]


def test_a_dry_run_leaves_every_entry_on_the_queue(
    store: InMemoryMessageStore, queue: FakeFailedQueue
) -> None:
    fail(store, queue, "p", permanent=True)
    fail(store, queue, "e")

    report = run(store, queue, dry_run=True)

    assert (report.redriven, report.permanent) == (["e"], ["p"])
    assert queue.ids() == ["p", "e"]
    assert queue.republished == []
    assert retries(store, "e") == []


def test_entries_unknown_to_the_store_or_unreadable_stay_on_the_queue(
    store: InMemoryMessageStore, queue: FakeFailedQueue
) -> None:
    queue.put(b"not json", {}, message_id="junk")
    queue.put(
        json.dumps({"message_id": "ghost", "channel": "sms", "to": TO, "body": BODY}).encode(),
        {"x-smeg-permanent": "false"},
        message_id="ghost",
    )
    fail(store, queue, "real")

    report = run(store, queue)

    assert (report.redriven, report.unknown, report.invalid) == (["real"], ["ghost"], 1)
    assert [e.message_id for e in queue.entries] == ["junk", "ghost"]
    assert queue.republished == []


def test_entries_of_messages_no_longer_failed_are_acked_and_do_not_count_against_the_limit(
    store: InMemoryMessageStore, queue: FakeFailedQueue
) -> None:
    # Given a stale entry (its message was retried since) ahead of an exhausted one
    fail(store, queue, "stale")
    store.update(Message.create_id("stale"), lambda m: m.request_retry("operator", now=T0))
    fail(store, queue, "e")
    # When
    report = run(store, queue, limit=1)
    # Then
    assert (report.skipped, report.redriven) == (["stale"], ["e"])
    assert queue.entries == []


def test_every_entry_is_looked_at_once_per_run_even_when_a_cycle_fails_again_meanwhile(
    store: InMemoryMessageStore, queue: FakeFailedQueue
) -> None:
    # Given an exhausted message whose redriven cycle fails again at once (its entry comes back)
    fail(store, queue, "m")

    def fails_again(_message: Message) -> None:
        fail(store, queue, "m")

    # When
    report = run(store, queue, on_redriven=fails_again)
    # Then that new entry waits for the next run
    assert report.redriven == ["m"]
    assert queue.ids() == ["m"]
    assert retries(store, "m") == ["redrive"]


def test_a_run_that_breaks_still_hands_back_the_entries_it_kept(
    store: InMemoryMessageStore, queue: FakeFailedQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    fail(store, queue, "p", permanent=True)
    fail(store, queue, "e")

    def broken(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError("store gone")

    monkeypatch.setattr(store, "update", broken)
    with pytest.raises(RuntimeError):
        run(store, queue)

    # The kept entry is back on the queue ("e", taken when the store broke, returns when the
    # reader's connection closes)
    assert queue.ids() == ["p"]
    assert queue.kept == []


def test_the_automatic_redriver_records_its_retries_as_auto_redrive(
    store: InMemoryMessageStore, queue: FakeFailedQueue
) -> None:
    fail(store, queue, "m")
    late = T0 + timedelta(minutes=1)

    run(store, queue, clock=lambda: late, budget=3)

    [retry] = [e for e in store.history(Message.create_id("m")) if isinstance(e, Message.RetryRequested)]
    assert (retry.requested_by, retry.timestamp) == (AUTO_REDRIVE, late)
