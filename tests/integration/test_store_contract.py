"""The event store's contract (``domain.ports.MessageRepository``), run against the in-memory fake
of the unit tests (``tests.fakes.InMemoryMessageStore``) and the real ``MessageStore`` on a SQLite
file and on PostgreSQL (a schema per test): the same changes give the same outcomes and leave the
same histories, so the actors' unit tests on the fake tell the truth about the real store."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from domain.backoff import BackoffPolicy
from domain.errors import (
    AttemptOutcomePendingError,
    MessageAlreadyFinalError,
    NoAttemptInFlightError,
    NotFailedError,
)
from domain.message import BACKED_OFF, DELIVERED, FAILED, IN_FLIGHT, RECEIVED, Message
from domain.ports import Change, MessageNotFoundError, MessageRepository, Outcome, StoreUnavailableError
from tests.fakes import InMemoryMessageStore
from tests.integration.backends import Backend

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)
ONE_ATTEMPT = BackoffPolicy(initial=60, factor=3, max_delay=3600, max_attempts=1)
POLICY = BackoffPolicy(initial=60, factor=3, max_delay=3600, max_attempts=3)


@dataclass
class Subject:
    """One implementation under contract: the store, another writer on the same data, and a way to
    make writes fail (the real database's inserts break; the fake's ``fail_next``)."""

    store: MessageRepository
    other: Callable[[], MessageRepository]
    break_writes: Callable[[], None]
    heal_writes: Callable[[], None]


@pytest.fixture(params=["fake", "sqlite", "postgres"])
def subject(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Subject]:
    if request.param == "fake":
        fake = InMemoryMessageStore()
        yield Subject(fake, lambda: fake, lambda: fake.fail_next(1), lambda: fake.fail_next(0))
        return
    if request.param == "sqlite":
        backend = Backend("sqlite", f"sqlite:///{tmp_path}/s.db")
    else:
        url, schema = request.getfixturevalue("pg_schema")
        backend = Backend("postgres", url, schema)
    try:
        yield Subject(backend.open(), backend.open, backend.break_inserts, backend.heal_inserts)
    finally:
        backend.close()


@pytest.fixture
def store(subject: Subject) -> MessageRepository:
    return subject.store


# --- helpers --------------------------------------------------------------------------------


def new_message(message_id: str, *, body: str = "hello", at: datetime = T0) -> Message:
    return Message.receive(
        message_id=message_id,
        channel="sms",
        to="+441234560123",
        body=body,
        correlation_id=f"corr-{message_id}",
        now=at,
        sender="ACME",
        metadata={"campaign": "spring"},
    )


def receiving(message_id: str, *, body: str = "hello") -> Change:
    """What the intake commits: every load builds the Received afresh from the request."""
    return Change(load=lambda: new_message(message_id, body=body))


def received(store: MessageRepository, *message_ids: str) -> list[Message]:
    outcomes = store.commit([receiving(m) for m in message_ids])
    assert all(o.saved for o in outcomes)
    return [store.get(Message.create_id(m)) for m in message_ids]


def changing(store: MessageRepository, message: Message, apply: Callable[[Message], None]) -> Change:
    """What the worker commits: reload from ``store`` on a retry, ``message`` is the cache."""
    return Change(load=lambda: store.get(message.id), apply=apply, cached=message)


def attempt(at: datetime = T0) -> Callable[[Message], None]:
    return lambda m: m.start_attempt("alpha", now=at)


def deliver(at: datetime = T0) -> Callable[[Message], None]:
    return lambda m: m.record_delivery("prov-1", now=at)


def kinds(store: MessageRepository, message_id: str) -> list[str]:
    return [type(e).__name__ for e in store.history(Message.create_id(message_id))]


def saved(outcome: Outcome) -> Message:
    """The message of a saved outcome."""
    assert outcome.saved and outcome.message is not None
    return outcome.message


def state(message: Message) -> dict[str, Any]:
    return {k: v for k, v in vars(message).items() if k != "_pending_events"}


def delivered(store: MessageRepository, message_id: str) -> Message:
    [message] = received(store, message_id)
    assert store.update(message.id, attempt()).saved
    assert store.update(message.id, deliver()).saved
    return store.get(message.id)


# --- saving and reading ---------------------------------------------------------------------


def test_a_new_message_is_saved_and_its_outcome_holds_the_callers_object_with_nothing_pending(
    store: MessageRepository,
) -> None:
    # Given
    message = new_message("m-1")
    # When
    [outcome] = store.commit([Change(load=lambda: new_message("m-1"), cached=message)])
    # Then
    assert outcome.saved and outcome == Outcome(message=message)
    assert outcome.message is message
    assert (message.version, message.pending_events) == (1, [])
    assert kinds(store, "m-1") == ["Received"]


def test_get_rebuilds_the_message_as_of_its_last_event_as_a_fresh_object_each_time(
    store: MessageRepository,
) -> None:
    # Given a message that went through several events, written from this object
    message = new_message("m-1", at=T0 - timedelta(hours=1))
    message.start_attempt("alpha", now=T0 - timedelta(hours=1))
    message.record_transient_failure("http 503", error="E", policy=POLICY, now=T0, status_code=503)
    [outcome] = store.commit([Change(load=lambda: message, cached=message)])
    assert outcome.saved
    # When
    first, second = store.get(message.id), store.get(message.id)
    # Then each is the writer's state, neither shares anything with the other or the store
    assert state(first) == state(second) == state(message)
    assert (first.status, first.version, first.retry_at) == (BACKED_OFF, 3, T0 + timedelta(seconds=60))
    assert first is not second and first.metadata is not second.metadata
    first.metadata["campaign"] = "changed"
    first.start_attempt("alpha", now=T0 + timedelta(hours=1))
    assert store.get(message.id).metadata == {"campaign": "spring"}
    assert store.get(message.id).status == BACKED_OFF
    assert kinds(store, "m-1") == ["Received", "Attempted", "BackedOff"]


def test_the_history_is_every_event_oldest_first_with_its_fields_and_utc_times(
    store: MessageRepository,
) -> None:
    # Given a message written in three commits
    [message] = received(store, "m-1")
    assert store.update(message.id, attempt(T0 + timedelta(seconds=1))).saved
    assert store.update(
        message.id,
        lambda m: m.record_permanent_failure("http 400", error="E", now=T0 + timedelta(seconds=2)),
    ).saved
    assert store.update(message.id, lambda m: m.request_retry("ops", now=T0 + timedelta(seconds=3))).saved
    # When
    history = store.history(message.id)
    # Then
    assert [type(e).__name__ for e in history] == ["Received", "Attempted", "Failed", "RetryRequested"]
    assert [e.originator_version for e in history] == [1, 2, 3, 4]
    assert [e.timestamp for e in history] == [T0 + timedelta(seconds=n) for n in range(4)]
    assert all(e.timestamp.utcoffset() == timedelta(0) for e in history)
    assert (history[0].message_id, history[0].metadata, history[0].sender) == (
        "m-1",
        {"campaign": "spring"},
        "ACME",
    )
    assert (history[2].reason, history[2].permanent, history[3].requested_by) == ("http 400", True, "ops")
    assert store.history(message.id) is not history


# --- optimistic concurrency -----------------------------------------------------------------


def test_receiving_the_same_message_id_twice_is_a_conflict_and_writes_nothing(
    store: MessageRepository,
) -> None:
    # Given
    received(store, "m-1")
    # When
    [outcome] = store.commit([receiving("m-1", body="second")])
    # Then
    assert outcome == Outcome(conflict=True)
    assert kinds(store, "m-1") == ["Received"]
    assert store.get(Message.create_id("m-1")).body == "hello"


def test_a_batch_saves_every_change_but_the_conflicting_ones(store: MessageRepository) -> None:
    # Given stored A and B, B cached by the caller
    _a, b = received(store, "a", "b")
    # When a batch holds a duplicate of A, a new message twice, and an attempt on B
    outcomes = store.commit(
        [
            receiving("c"),
            receiving("a", body="dup"),
            changing(store, b, attempt()),
            receiving("d"),
            receiving("d"),
        ]
    )
    # Then
    assert [o.saved for o in outcomes] == [True, False, True, True, False]
    assert outcomes[1] == outcomes[4] == Outcome(conflict=True)
    assert [kinds(store, m) for m in ("a", "b", "c", "d")] == [
        ["Received"],
        ["Received", "Attempted"],
        ["Received"],
        ["Received"],
    ]


def test_a_change_on_a_stale_cached_object_is_reloaded_and_decided_again_on_the_latest_version(
    subject: Subject, store: MessageRepository
) -> None:
    # Given the caller holds version 1 while another writer starts an attempt
    [stale] = received(store, "m-1")
    assert subject.other().update(stale.id, attempt()).saved
    later = T0 + timedelta(hours=1)

    def interrupt_then_attempt(m: Message) -> None:
        if m.status == IN_FLIGHT:
            m.record_interruption(policy=POLICY, now=later)
        m.start_attempt("alpha", now=later)

    change = changing(store, stale, interrupt_then_attempt)
    # When
    [outcome] = store.commit([change])
    # Then it was decided again on version 2, and the outcome holds the reloaded message
    latest = saved(outcome)
    assert latest is not stale
    assert (latest.version, latest.status, latest.attempts) == (4, IN_FLIGHT, 2)
    assert kinds(store, "m-1") == ["Received", "Attempted", "BackedOff", "Attempted"]
    assert change.cached is None and stale.pending_events == []


def test_two_writers_attempting_the_same_version_attempt_once_and_the_second_is_refused_on_reload(
    subject: Subject, store: MessageRepository
) -> None:
    # Given two writers, each holding its own copy of version 1
    [first] = received(store, "m-1")
    other = subject.other()
    second = other.get(first.id)
    # When both start an attempt on their copy
    [one] = store.commit([changing(store, first, attempt())])
    [two] = other.commit([changing(other, second, attempt())])
    # Then
    assert one.saved
    assert isinstance(two.refused, AttemptOutcomePendingError)
    assert not two.saved and not two.conflict
    assert kinds(store, "m-1") == ["Received", "Attempted"]


def test_a_change_refused_on_its_cached_object_is_not_reloaded(
    subject: Subject, store: MessageRepository
) -> None:
    # Given the caller holds the message Failed, and a person retried it since
    [message] = received(store, "m-1")
    assert store.update(message.id, attempt()).saved
    assert store.update(
        message.id,
        lambda m: m.record_transient_failure("http 503", error="E", policy=ONE_ATTEMPT, now=T0),
    ).saved
    cached = store.get(message.id)
    assert cached.status == FAILED
    assert subject.other().update(message.id, lambda m: m.request_retry("ops", now=T0)).saved
    # When the caller attempts on its cached copy
    [outcome] = store.commit([changing(store, cached, attempt())])
    # Then the refusal of the cached copy stands: nothing reloaded, nothing written
    assert isinstance(outcome.refused, MessageAlreadyFinalError)
    assert kinds(store, "m-1") == ["Received", "Attempted", "Failed", "RetryRequested"]
    assert store.get(message.id).status == RECEIVED


# --- refusals, unknown ids, errors ----------------------------------------------------------


def test_a_domain_refusal_writes_nothing_and_does_not_block_the_rest_of_the_batch(
    store: MessageRepository,
) -> None:
    # Given a delivered message and a received one
    finished = delivered(store, "done")
    [fresh] = received(store, "fresh")
    # When a batch records an outcome on the delivered one and starts an attempt on the other
    outcomes = store.commit([changing(store, finished, deliver()), changing(store, fresh, attempt())])
    # Then
    assert isinstance(outcomes[0].refused, MessageAlreadyFinalError)
    assert outcomes[0].message is None and not outcomes[0].conflict
    assert outcomes[1].saved
    assert kinds(store, "done") == ["Received", "Attempted", "Delivered"]
    assert kinds(store, "fresh") == ["Received", "Attempted"]


def test_a_domain_refusal_in_a_batch_that_fell_back_after_a_conflict_is_refused_again(
    store: MessageRepository,
) -> None:
    finished = delivered(store, "x")

    outcomes = store.commit([changing(store, finished, attempt()), receiving("x"), receiving("w")])

    assert isinstance(outcomes[0].refused, MessageAlreadyFinalError)
    assert outcomes[1] == Outcome(conflict=True)
    assert outcomes[2].saved
    assert kinds(store, "x") == ["Received", "Attempted", "Delivered"]


def test_an_unknown_id_is_not_found_missing_from_a_batch_and_has_no_history(store: MessageRepository) -> None:
    ghost = uuid.uuid4()

    with pytest.raises(MessageNotFoundError):
        store.get(ghost)
    outcomes = store.commit([Change(load=lambda: store.get(ghost), apply=attempt()), receiving("real")])
    with pytest.raises(MessageNotFoundError):
        store.update(ghost, attempt())

    assert outcomes[0] == Outcome(missing=True)
    assert outcomes[1].saved
    assert store.history(ghost) == []
    assert kinds(store, "real") == ["Received"]


def test_a_bug_in_a_change_is_raised_after_the_rest_of_its_batch_is_saved(store: MessageRepository) -> None:
    [message] = received(store, "m-1")

    def broken(_m: Message) -> None:
        raise RuntimeError("bug")

    with pytest.raises(RuntimeError, match="bug"):
        store.commit([changing(store, message, broken), receiving("other")])

    assert kinds(store, "m-1") == ["Received"]
    assert kinds(store, "other") == ["Received"]


def test_an_empty_batch_saves_nothing(store: MessageRepository) -> None:
    assert store.commit([]) == []


# --- update ---------------------------------------------------------------------------------


def test_update_loads_applies_and_saves_and_a_refusal_writes_nothing(store: MessageRepository) -> None:
    # Given
    [message] = received(store, "m-1")
    # When
    attempted = store.update(message.id, attempt())
    refused = store.update(message.id, lambda m: m.request_retry("ops", now=T0))
    interrupted = store.update(message.id, lambda m: m.record_interruption(policy=POLICY, now=T0))
    # Then
    assert (saved(attempted).status, saved(attempted).version) == (IN_FLIGHT, 2)
    assert isinstance(refused.refused, NotFailedError) and not refused.saved
    assert saved(interrupted).status == BACKED_OFF
    assert kinds(store, "m-1") == ["Received", "Attempted", "BackedOff"]
    assert isinstance(store.update(message.id, deliver()).refused, NoAttemptInFlightError)


def test_update_reloads_and_re_decides_after_another_writer_got_there_first(
    subject: Subject, store: MessageRepository
) -> None:
    # Given
    [message] = received(store, "m-1")
    other = subject.other()
    seen: list[str] = []

    def deliver_or_attempt(m: Message) -> None:
        seen.append(m.status)
        if len(seen) == 1:  # another writer starts an attempt between our load and our save
            assert other.update(m.id, attempt()).saved
        if m.status == IN_FLIGHT:
            m.record_delivery("prov-1", now=T0)
        else:
            m.start_attempt("alpha", now=T0)

    # When
    outcome = store.update(message.id, deliver_or_attempt)
    # Then
    assert saved(outcome).status == DELIVERED
    assert seen == [RECEIVED, IN_FLIGHT]
    assert kinds(store, "m-1") == ["Received", "Attempted", "Delivered"]


# --- failed writes (library-notes G1) -------------------------------------------------------


def test_a_failed_commit_writes_nothing_and_a_retry_of_the_same_changes_reloads_them(
    subject: Subject, store: MessageRepository
) -> None:
    # Given a cached message, and writes that fail
    [message] = received(store, "a")
    changes = [changing(store, message, attempt()), receiving("b")]
    subject.break_writes()
    # When
    with pytest.raises(StoreUnavailableError):
        store.commit(changes)
    # Then nothing was written, and the cached object is spent (its events drained)
    assert kinds(store, "a") == ["Received"] and kinds(store, "b") == []
    assert changes[0].cached is None and message.pending_events == []
    # When the caller retries the same changes once writes work again
    subject.heal_writes()
    outcomes = store.commit(changes)
    # Then each was reloaded and decided again, and written
    assert all(o.saved for o in outcomes)
    assert outcomes[0].message is not message
    assert kinds(store, "a") == ["Received", "Attempted"] and kinds(store, "b") == ["Received"]


def test_a_change_whose_load_returns_the_drained_object_reports_saved_but_writes_nothing(
    store: MessageRepository,
) -> None:
    # Given a stored message, and a second Received of it whose load hands back the same object
    received(store, "m-1")
    duplicate = new_message("m-1", body="dup")
    # When the write conflicts, and the retry "reloads" the object its failed save drained
    [outcome] = store.commit([Change(load=lambda: duplicate, cached=duplicate)])
    # Then the outcome says saved, yet nothing was written: why Change.load must build afresh
    assert outcome.saved and outcome.message is duplicate
    assert kinds(store, "m-1") == ["Received"]
    assert store.get(duplicate.id).body == "hello"


# --- the fake's own knobs -------------------------------------------------------------------


def test_the_fake_fails_exactly_the_next_n_commits_and_counts_every_commit() -> None:
    fake = InMemoryMessageStore()
    fake.fail_next(2)

    for _ in range(2):
        with pytest.raises(StoreUnavailableError):
            fake.commit([receiving("m-1")])
    [outcome] = fake.commit([receiving("m-1")])

    assert outcome.saved
    assert fake.commits == 3
    assert kinds(fake, "m-1") == ["Received"]
    fake.update(Message.create_id("m-1"), attempt())
    assert fake.commits == 4
