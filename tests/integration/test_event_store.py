"""MessageStore against real databases: a SQLite file and PostgreSQL (a schema per test)."""

from __future__ import annotations

import copy
import threading
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from adapters.event_log import in_partition
from adapters.event_store import (
    Change,
    MessageNotFoundError,
    MessageStore,
    Outcome,
    StoreUnavailableError,
    event_type,
)
from domain.backoff import BackoffPolicy
from domain.errors import AttemptOutcomePendingError, MessageAlreadyFinalError
from domain.message import Message
from smeg_actors.actors.store_retry import retry_until

UNREACHABLE_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:1/test"
NO_WAIT = BackoffPolicy(initial=0)


# --- helpers --------------------------------------------------------------------------------


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def new_message(message_id: str, *, body: str = "hello", now: datetime | None = None) -> Message:
    return Message.receive(
        message_id=message_id,
        channel="sms",
        to="+441234560123",
        body=body,
        correlation_id=f"corr-{message_id}",
        now=now or utcnow(),
    )


def receiving(message_id: str, *, body: str = "hello") -> Change:
    """A receive change: every load builds the Received afresh from the request."""
    return Change(load=lambda: new_message(message_id, body=body))


def received(store: MessageStore, *message_ids: str) -> list[Message]:
    outcomes = store.commit([receiving(m) for m in message_ids])
    assert all(o.saved for o in outcomes)
    return [store.get_by_message_id(m) for m in message_ids]


def attempt(message: Message) -> None:
    message.start_attempt("alpha", now=utcnow())


def interrupt(message: Message) -> None:
    message.record_interruption(policy=NO_WAIT, now=utcnow())


def changing(store: MessageStore, message: Message, apply: Callable[[Message], None]) -> Change:
    """A change of a stored message: reloads from ``store`` on retry, ``message`` is the cache."""
    return Change(load=lambda: store.get(message.id), apply=apply, cached=message)


def stored_types(store: MessageStore) -> Counter[str]:
    return Counter(event_type(event) for _, event in store.iter_log())


def types_of(store: MessageStore, message: Message) -> list[str]:
    return [event_type(e) for e in store.history(message.id)]


def state(message: Message) -> dict[str, Any]:
    return {k: v for k, v in vars(message).items() if k != "_pending_events"}


def assert_utc(moment: datetime) -> None:
    assert moment.tzinfo is not None
    assert moment.utcoffset() == timedelta(0)


# --- round trip -----------------------------------------------------------------------------


def every_event_type(now: datetime) -> Message:
    """One message whose history holds each event type, every optional field filled in."""
    policy = BackoffPolicy(initial=30, factor=2, max_delay=600, max_attempts=2, jitter=0.0)
    message = Message.receive(
        message_id="order-42",
        channel="im",
        to="@alice:example.org",
        body="Grüße 👋",
        correlation_id="corr-42",
        now=now,
        sender="ACME",
        metadata={"campaign": "spring", "tier": "gold"},
        provider="alpha",
    )
    message.start_attempt("alpha", now=now)
    message.record_transient_failure(
        "provider_unavailable",
        error="http 503",
        policy=policy,
        now=now + timedelta(seconds=1),
        status_code=503,
        latency_ms=123.5,
        retry_after=90,
    )
    later = message.retry_at
    message.start_attempt("beta", now=later)
    message.record_interruption(policy=BackoffPolicy(max_attempts=3), now=later)
    message.start_attempt("alpha", now=later)
    message.record_transient_failure("timeout", error="read timeout", policy=policy, now=later)
    message.request_retry("ops@example.com", now=later + timedelta(minutes=1))
    message.start_attempt("alpha", now=later + timedelta(minutes=1))
    message.record_permanent_failure(
        "rejected", error="http 400", now=later + timedelta(minutes=2), status_code=400
    )
    message.request_retry("redrive", now=later + timedelta(minutes=3))
    message.start_attempt("beta", now=later + timedelta(minutes=3))
    message.record_delivery("prov-99", now=later + timedelta(minutes=4), latency_ms=15.25)
    return message


def test_every_event_type_round_trips_with_all_fields(backend, store):
    # Given
    message = every_event_type(utcnow())
    written, expected_state = list(message.pending_events), state(message)

    # When
    [outcome] = store.commit([Change(load=lambda: message)])
    history = backend.open().history(message.id)

    # Then
    assert outcome.saved
    assert history == written
    assert {event_type(e) for e in history} == {
        "Received",
        "Attempted",
        "BackedOff",
        "Failed",
        "RetryRequested",
        "Delivered",
    }
    for event in history:
        assert_utc(event.timestamp)
    backed_off = [e for e in history if isinstance(e, Message.BackedOff)]
    for event in backed_off:
        assert_utc(event.retry_at)
    assert backed_off[0].policy == {
        "initial": 30,
        "factor": 2,
        "max_delay": 600,
        "max_attempts": 2,
        "jitter": 0.0,
    }
    assert state(store.get(message.id)) == expected_state
    assert store.history_head(message.id) == written[0]


def test_a_reloaded_message_has_tz_aware_utc_datetimes(store):
    # Given
    message = new_message("m-1")
    attempt(message)
    message.record_transient_failure("t", error="t", policy=BackoffPolicy(), now=utcnow())
    store.commit([Change(load=lambda: message)])

    # When
    reloaded = store.get_by_message_id("m-1")

    # Then
    for moment in (reloaded.created_on, reloaded.modified_on, reloaded.retry_at):
        assert_utc(moment)
    assert reloaded.retry_at == message.retry_at


# --- idempotent receive ---------------------------------------------------------------------


def test_receiving_the_same_message_id_twice_is_a_conflict_and_leaves_the_history_unchanged(
    store,
):
    # Given
    store.commit([receiving("order-1", body="first")])
    before = store.history(Message.create_id("order-1"))

    # When
    [outcome] = store.commit([receiving("order-1", body="second")])

    # Then
    assert outcome == Outcome(conflict=True)
    assert not outcome.saved
    assert store.history(Message.create_id("order-1")) == before
    assert store.get_by_message_id("order-1").body == "first"
    assert stored_types(store) == {"Received": 1}


# --- optimistic concurrency -----------------------------------------------------------------


def test_two_writers_deciding_on_the_same_version_save_once_and_the_second_gets_a_conflict(backend, store):
    # Given two writers that both loaded version 1
    [message] = received(store, "m-1")
    writer1, writer2 = store, backend.open()
    seen_by_1, seen_by_2 = writer1.get(message.id), writer2.get(message.id)
    assert seen_by_1.version == seen_by_2.version == 1

    # When both start an attempt, each on the version it saw
    first = writer1.commit([Change(load=lambda: copy.deepcopy(seen_by_1), apply=attempt)])
    second = writer2.commit([Change(load=lambda: copy.deepcopy(seen_by_2), apply=attempt)])

    # Then
    assert first[0].saved
    assert second == [Outcome(conflict=True)]
    assert types_of(store, message) == ["Received", "Attempted"]


def test_a_stale_cached_change_is_re_decided_on_the_latest_version(backend, store):
    # Given writer 2 holds version 1 while writer 1 starts an attempt
    [message] = received(store, "m-1")
    writer2 = backend.open()
    stale = writer2.get(message.id)
    assert store.update(message.id, attempt).saved

    # When writer 2 starts an attempt on its stale copy
    [outcome] = writer2.commit([changing(writer2, stale, attempt)])

    # Then it reloaded, saw the attempt in flight, and the domain refused
    assert isinstance(outcome.refused, AttemptOutcomePendingError)
    assert not outcome.saved and not outcome.conflict
    assert types_of(store, message) == ["Received", "Attempted"]


def test_update_reloads_and_re_decides_after_a_conflict(backend, store):
    # Given
    [message] = received(store, "m-1")
    other = backend.open()
    seen: list[str] = []

    def deliver_or_attempt(m: Message) -> None:
        seen.append(m.status)
        if len(seen) == 1:  # another writer starts an attempt between our load and our save
            assert other.update(m.id, attempt).saved
        if m.status == "in_flight":
            m.record_delivery("prov-1", now=utcnow())
        else:
            attempt(m)

    # When
    outcome = store.update(message.id, deliver_or_attempt)

    # Then
    assert outcome.saved
    assert seen == ["received", "in_flight"]
    assert types_of(store, message) == ["Received", "Attempted", "Delivered"]
    assert outcome.message.status == "delivered"


def test_update_reloads_again_when_the_fallback_conflicts_too(backend, store):
    # Given another writer that appends between our load and save twice in a row
    [message] = received(store, "m-1")
    other = backend.open()
    calls: list[str] = []

    def decide(m: Message) -> None:
        calls.append(m.status)
        if len(calls) == 1:
            assert other.update(m.id, attempt).saved
        elif len(calls) == 2:
            assert other.update(m.id, interrupt).saved
        if m.status == "in_flight":
            m.record_delivery("prov-1", now=utcnow())
        else:
            attempt(m)

    # When
    outcome = store.update(message.id, decide)

    # Then
    assert outcome.saved
    assert calls == ["received", "in_flight", "backed_off"]
    assert types_of(store, message) == ["Received", "Attempted", "BackedOff", "Attempted"]


# --- batches (library-notes G1) -------------------------------------------------------------


def test_a_batch_with_one_conflicting_change_still_saves_every_other_change(store):
    # Given stored messages A and B, and B loaded by the caller (its cached object)
    a, b = received(store, "a", "b")
    before = store.max_position()

    # When a batch holds a duplicate of A among new messages and an attempt on B
    outcomes = store.commit(
        [
            receiving("c"),
            receiving("a", body="duplicate"),
            changing(store, b, attempt),
            receiving("d"),
        ]
    )

    # Then only the duplicate is a conflict, and no event of the others was lost
    assert [o.saved for o in outcomes] == [True, False, True, True]
    assert outcomes[1].conflict
    assert stored_types(store) == {"Received": 4, "Attempted": 1}
    assert types_of(store, b) == ["Received", "Attempted"]
    assert types_of(store, a) == ["Received"]
    assert len(store.read_log(before, 100)) == 3


def test_a_batch_where_another_writer_got_there_first_saves_the_rest(backend, store):
    # Given the caller holds A and B at version 1, and another writer attempts A first
    a, b = received(store, "a", "b")
    assert backend.open().update(a.id, attempt).saved

    # When the caller's batch records an attempt on both
    outcomes = store.commit([changing(store, a, attempt), changing(store, b, attempt)])

    # Then A is re-decided (refused: attempt in flight) and B is saved
    assert isinstance(outcomes[0].refused, AttemptOutcomePendingError)
    assert outcomes[1].saved
    assert stored_types(store) == {"Received": 2, "Attempted": 2}
    assert types_of(store, b) == ["Received", "Attempted"]


def test_retrying_a_failed_commit_with_the_same_changes_writes_the_events(backend, store):
    # Given a cached message, and a database whose inserts fail
    [a] = received(store, "a")
    changes = [changing(store, a, attempt), receiving("b")]
    position = store.max_position()
    backend.break_inserts()

    # When the commit fails
    with pytest.raises(StoreUnavailableError) as failure:
        store.commit(changes)

    # Then nothing was written and the error is one line
    assert "\n" not in str(failure.value)
    assert store.max_position() == position

    # When the database recovers and the caller retries with the same Change objects
    backend.heal_inserts()
    outcomes = store.commit(changes)

    # Then the events are written (the change reloaded; it did not reuse the drained object)
    assert all(o.saved for o in outcomes)
    assert types_of(store, a) == ["Received", "Attempted"]
    assert stored_types(store) == {"Received": 2, "Attempted": 1}


def test_changes_are_decided_on_the_callers_thread_and_only_written_by_the_committer(store):
    # Given
    [a] = received(store, "a")
    threads: list[str] = []

    def attempt_here(message: Message) -> None:
        threads.append(threading.current_thread().name)
        attempt(message)

    # When
    [outcome] = store.commit([changing(store, a, attempt_here)])

    # Then: the domain decision ran here; the committer thread only wrote its rows
    assert outcome.saved
    assert threads == [threading.current_thread().name]
    assert types_of(store, a) == ["Received", "Attempted"]


def test_a_commit_that_failed_while_deciding_reloads_every_change_on_retry(store):
    # Given: the second change's load fails once, after the first was decided on its cached object
    [a, b] = received(store, "a", "b")
    loads: list[int] = []

    def load_b() -> Message:
        loads.append(1)
        if len(loads) == 1:
            raise StoreUnavailableError("connection lost")
        return store.get(b.id)

    changes = [changing(store, a, attempt), Change(load=load_b, apply=attempt)]
    with pytest.raises(StoreUnavailableError):
        store.commit(changes)

    # When the caller retries the same changes
    outcomes = store.commit(changes)

    # Then: the first was reloaded and decided again, not attempted twice on its drained object
    assert all(o.saved for o in outcomes)
    assert types_of(store, a) == ["Received", "Attempted"]
    assert types_of(store, b) == ["Received", "Attempted"]


def test_retry_until_a_failed_commit_succeeds_writes_the_events_once(backend, store):
    # Given
    [a] = received(store, "a")
    changes = [changing(store, a, attempt)]
    backend.break_inserts()
    tries: list[int] = []

    def commit() -> list[Outcome]:
        tries.append(1)
        if len(tries) == 3:
            backend.heal_inserts()
        return store.commit(changes)

    # When
    outcomes = retry_until(commit, grace=60, sleep=lambda _s: None)

    # Then
    assert len(tries) == 3
    assert outcomes[0].saved
    assert types_of(store, a) == ["Received", "Attempted"]


def test_a_domain_refusal_inside_a_batch_does_not_block_the_others(store):
    # Given a delivered message X and a received message Y
    x, y = received(store, "x", "y")
    store.update(x.id, attempt)
    store.update(x.id, lambda m: m.record_delivery("prov-1", now=utcnow()))
    x = store.get(x.id)

    # When
    outcomes = store.commit([changing(store, x, attempt), changing(store, y, attempt), receiving("z")])

    # Then
    assert isinstance(outcomes[0].refused, MessageAlreadyFinalError)
    assert not outcomes[0].saved
    assert outcomes[1].saved and outcomes[2].saved
    assert types_of(store, x) == ["Received", "Attempted", "Delivered"]
    assert types_of(store, y) == ["Received", "Attempted"]
    assert store.get_by_message_id("z").status == "received"


def test_a_domain_refusal_inside_a_batch_that_falls_back_is_refused_again(store):
    # Given a delivered message X and a duplicate receive forcing the one-by-one fallback
    [x] = received(store, "x")
    store.update(x.id, attempt)
    store.update(x.id, lambda m: m.record_delivery("prov-1", now=utcnow()))

    # When
    outcomes = store.commit([changing(store, store.get(x.id), attempt), receiving("x"), receiving("w")])

    # Then
    assert isinstance(outcomes[0].refused, MessageAlreadyFinalError)
    assert outcomes[1].conflict
    assert outcomes[2].saved


def test_a_change_of_an_unknown_message_in_a_batch_does_not_block_the_others(store):
    # Given
    ghost = uuid.uuid4()

    # When
    outcomes = store.commit([Change(load=lambda: store.get(ghost), apply=attempt), receiving("real")])

    # Then
    assert not outcomes[0].saved
    assert outcomes[1].saved
    assert store.get_by_message_id("real").status == "received"


def test_an_empty_batch_saves_nothing(store):
    assert store.commit([]) == []
    assert store.max_position() == 0


# --- the log --------------------------------------------------------------------------------


def ten_events(store: MessageStore) -> list[str]:
    """Ten events in a known order: ten receives, one commit each; returns their message ids."""
    ids = [f"m-{n:02d}" for n in range(10)]
    for message_id in ids:
        assert store.commit([receiving(message_id)])[0].saved
    return ids


def test_read_log_returns_events_in_store_order(store):
    # Given
    ids = ten_events(store)

    # When
    log = store.read_log(0, 100)

    # Then
    positions = [n.id for n in log]
    assert positions == sorted(positions) and len(set(positions)) == 10
    assert [store.decode(n).message_id for n in log] == ids


def test_read_log_pages_after_a_position(store):
    # Given
    ten_events(store)
    positions = [n.id for n in store.read_log(0, 100)]

    # When / Then
    assert [n.id for n in store.read_log(positions[2], 3)] == positions[3:6]
    assert [n.id for n in store.read_log(positions[8], 3)] == positions[9:]
    assert store.read_log(positions[-1], 3) == []


def test_iter_log_yields_every_event_in_order_page_by_page(store):
    # Given
    ids = ten_events(store)
    positions = [n.id for n in store.read_log(0, 100)]

    # When
    entries = list(store.iter_log(page=3))

    # Then
    assert [position for position, _ in entries] == positions
    assert [event.message_id for _, event in entries] == ids
    assert all(isinstance(event, Message.Received) for _, event in entries)


def test_iter_log_resumes_after_a_position(store):
    # Given
    ids = ten_events(store)
    positions = [n.id for n in store.read_log(0, 100)]

    # When
    entries = list(store.iter_log(after=positions[4], page=3))

    # Then
    assert [position for position, _ in entries] == positions[5:]
    assert [event.message_id for _, event in entries] == ids[5:]


def test_iter_log_of_an_empty_store_yields_nothing(store):
    assert list(store.iter_log(page=3)) == []


def test_the_log_keeps_the_order_of_events_within_one_batch(store):
    # Given
    message = new_message("m-1")
    attempt(message)
    message.record_delivery("prov-1", now=utcnow())

    # When
    store.commit([Change(load=lambda: message), receiving("m-2")])

    # Then
    assert [event_type(e) for _, e in store.iter_log(page=3)] == [
        "Received",
        "Attempted",
        "Delivered",
        "Received",
    ]


def test_read_events_builds_the_same_events_as_the_library_mapper(store):
    # Given every event type, every optional field filled in, and a delivered message
    message = every_event_type(utcnow())
    delivered = new_message("m-ok")
    attempt(delivered)
    delivered.record_delivery("p-1", now=utcnow(), latency_ms=12.5)
    store.commit([Change(load=lambda: message), Change(load=lambda: delivered)])

    # When
    entries, last = store.read_events(0, 100)

    # Then: event for event what eventsourcing's own Mapper decodes, same class, same fields
    library = [(n.id, store.decode(n)) for n in store.read_log(0, 100)]
    assert [at for at, _ in entries] == [at for at, _ in library] and last == library[-1][0]
    for (_, fast), (_, slow) in zip(entries, library, strict=True):
        assert type(fast) is type(slow)
        assert vars(fast) == vars(slow)
        assert all(type(vars(fast)[key]) is type(value) for key, value in vars(slow).items())


def test_read_events_pages_until_a_position_and_by_partition(store):
    # Given
    ten_events(store)
    positions = [n.id for n in store.read_log(0, 100)]

    # When
    bounded, bounded_last = store.read_events(positions[1], 100, until=positions[4])
    odd, odd_last = store.read_events(0, 100, partition=(1, 2))
    even, _ = store.read_events(0, 100, partition=(0, 2))
    thirds = [store.read_events(0, 100, partition=(k, 3))[0] for k in range(3)]

    # Then
    assert [at for at, _ in bounded] == positions[2:5] and bounded_last == positions[4]
    assert odd_last == positions[-1]
    assert sorted(at for at, _ in odd + even) == positions
    assert all(e.originator_id.int % 2 == 1 for _, e in odd)
    assert sorted(at for part in thirds for at, _ in part) == positions
    assert all(in_partition(e.originator_id, (k, 3)) for k, part in enumerate(thirds) for _, e in part)
    assert store.read_events(positions[-1], 10) == ([], positions[-1])


def test_read_events_reports_the_last_row_read_even_when_the_partition_takes_none(store):
    # Given
    ten_events(store)
    positions = [n.id for n in store.read_log(0, 100)]

    # When
    first_three = {e.originator_id for _, e in store.read_events(0, 3)[0]}
    empty = next(k for k in range(16) if not any(in_partition(i, (k, 16)) for i in first_three))
    entries, last = store.read_events(0, 3, partition=(empty, 16))

    # Then
    assert entries == [] and last == positions[2]


def test_max_position_is_zero_for_an_empty_store(store):
    assert store.max_position() == 0


def test_max_position_is_the_position_of_the_newest_event(store):
    # Given
    ten_events(store)

    # When / Then
    assert store.max_position() == store.read_log(0, 100)[-1].id


# --- not found and unavailable --------------------------------------------------------------


def test_getting_an_unknown_id_raises_message_not_found(store):
    ghost = uuid.uuid4()

    with pytest.raises(MessageNotFoundError, match=str(ghost)):
        store.get(ghost)


def test_getting_an_unknown_message_id_raises_message_not_found_naming_it(store):
    with pytest.raises(MessageNotFoundError, match="never-sent"):
        store.get_by_message_id("never-sent")


def test_the_history_head_of_an_unknown_id_raises_message_not_found(store):
    with pytest.raises(MessageNotFoundError):
        store.history_head(uuid.uuid4())


def test_the_history_of_an_unknown_id_is_empty(store):
    assert store.history(uuid.uuid4()) == []


def test_updating_an_unknown_id_raises_message_not_found(store):
    with pytest.raises(MessageNotFoundError):
        store.update(uuid.uuid4(), attempt)


def test_ping_of_a_healthy_store_returns(store):
    store.ping()


def test_ping_of_a_broken_store_raises_store_unavailable_in_one_line(backend, store):
    # Given
    backend.drop_events_table()

    # When
    with pytest.raises(StoreUnavailableError) as failure:
        store.ping()

    # Then
    assert "\n" not in str(failure.value)
    assert failure.value.__cause__ is None and failure.value.__suppress_context__


def test_an_unreachable_postgresql_raises_store_unavailable_in_one_line():
    with pytest.raises(StoreUnavailableError) as failure:
        MessageStore(UNREACHABLE_POSTGRES)

    text = str(failure.value)
    assert text and "\n" not in text
    assert "Traceback" not in text
    assert failure.value.__cause__ is None and failure.value.__suppress_context__


def test_two_in_memory_sqlite_stores_do_not_share_events():
    # Given two stores open at the same time on "sqlite://"
    first, second = MessageStore("sqlite://"), MessageStore("sqlite://")
    try:
        # When the first saves a message
        first.commit([receiving("only-in-first")])

        # Then the second does not see it
        assert second.max_position() == 0
        with pytest.raises(MessageNotFoundError):
            second.get_by_message_id("only-in-first")
    finally:
        first.close()
        second.close()


def test_a_batch_with_scattered_conflicts_saves_every_other_change_and_flags_each_conflict(store):
    # Given three messages already stored
    received(store, "dup-5", "dup-50", "dup-99")
    names = [f"dup-{i}" if i in (5, 50, 99) else f"new-{i}" for i in range(100)]
    # When a batch of 100 receives repeats them at scattered places
    outcomes = store.commit([receiving(name) for name in names])
    # Then exactly those three are conflicts and the 97 others are saved
    conflicts = [name for name, outcome in zip(names, outcomes, strict=True) if outcome.conflict]
    assert conflicts == ["dup-5", "dup-50", "dup-99"]
    assert sum(outcome.saved for outcome in outcomes) == 97
    assert stored_types(store)["Received"] == 100


def test_histories_returns_each_messages_events_in_version_order_for_many_ids(store):
    # Given 600 messages (more than one query's worth of ids), one of them with three events
    messages = received(store, *(f"h-{k}" for k in range(600)))
    busy = messages[7]
    attempt(busy)
    busy.record_delivery("p-1", now=utcnow(), latency_ms=3.0)
    store.commit([Change(load=lambda: busy)])
    unknown = Message.create_id("never-received")

    # When
    found = store.histories([m.id for m in messages] + [unknown, busy.id])

    # Then: every known message, its events in order, as the log reader decodes them
    assert set(found) == {m.id for m in messages}
    assert [event_type(e) for e in found[busy.id]] == ["Received", "Attempted", "Delivered"]
    assert [e.originator_version for e in found[busy.id]] == [1, 2, 3]
    assert all(len(found[m.id]) == 1 for m in messages if m is not busy)
    logged = {(e.originator_id, e.originator_version): vars(e) for _, e in store.iter_log()}
    assert all(vars(e) == logged[e.originator_id, e.originator_version] for e in found[busy.id])
