"""The Message aggregate: every rule about what may follow what, each with its exception."""

from __future__ import annotations

import functools
import itertools
import random
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from typing import Any
from uuid import UUID, uuid5

import pytest
from freezegun import freeze_time
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from adapters.event_store import Change, MessageStore
from domain.backoff import BackoffPolicy
from domain.errors import (
    AttemptOutcomePendingError,
    DomainError,
    InvalidTransitionError,
    MessageAlreadyFinalError,
    NoAttemptInFlightError,
    NotFailedError,
    RetryNotDueError,
)
from domain.message import MESSAGE_NAMESPACE, Message

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)
POLICY = BackoffPolicy()  # 60 s × 3, cap 3600 s, 5 attempts, no jitter
OUTCOMES = (Message.BackedOff, Message.Delivered, Message.Failed)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def a_message(*, now: datetime = T0, **fields: Any) -> Message:
    request: dict[str, Any] = {
        "message_id": f"msg-{uuid.uuid4().hex}",
        "channel": "sms",
        "to": "+441234560123",
        "body": "Your code is 123456",
        "correlation_id": f"corr-{uuid.uuid4().hex[:8]}",
        "sender": "ACME",
        "metadata": {"campaign": "spring"},
        "provider": None,
    }
    request.update(fields)
    return Message.receive(now=now, **request)


def in_flight(*, now: datetime = T0, **fields: Any) -> Message:
    message = a_message(now=now, **fields)
    message.start_attempt("alpha", now=now)
    return message


def delivered(*, now: datetime = T0) -> Message:
    message = in_flight(now=now)
    message.record_delivery("prov-1", now=now)
    return message


def failed(*, now: datetime = T0) -> Message:
    message = in_flight(now=now)
    message.record_permanent_failure("rejected", error="http 400", now=now, status_code=400)
    return message


def backed_off(*, now: datetime = T0) -> Message:
    message = in_flight(now=now)
    message.record_transient_failure("timeout", error="read timeout", policy=POLICY, now=now)
    return message


def events(message: Message) -> list[Any]:
    """The message's pending events, without draining them."""
    return list(message.pending_events)


def new_events(message: Message, before: int) -> list[Any]:
    return events(message)[before:]


def state(message: Message) -> dict[str, Any]:
    """Everything the aggregate knows, except its not-yet-saved events."""
    return {k: v for k, v in vars(message).items() if k != "_pending_events"}


def replay(history: list[Any]) -> Message:
    return functools.reduce(lambda aggregate, event: event.mutate(aggregate), history, None)


def cycle_attempts_at_end(history: list[Any]) -> int:
    count = 0
    for event in history:
        if isinstance(event, Message.RetryRequested):
            count = 0
        elif isinstance(event, Message.Attempted):
            count += 1
        elif isinstance(event, Message.BackedOff) and event.throttled:
            count -= 1  # the provider's pace: not counted
    return count


def assert_history_follows_rules(history: list[Any], *, max_attempts: int) -> None:
    """Check a history against every rule, independently of the aggregate's own checks."""
    first = history[0]
    assert isinstance(first, Message.Received)
    assert [e.originator_version for e in history] == list(range(1, len(history) + 1))
    assert {e.originator_id for e in history} == {first.originator_id}
    assert {e.correlation_id for e in history} == {first.correlation_id}
    attempt = cycle = 0
    retry_at: datetime | None = None
    for previous, event in itertools.pairwise(history):
        assert not isinstance(event, Message.Received)
        assert not isinstance(previous, Message.Delivered), "an event followed Delivered"
        if isinstance(previous, Message.Failed):
            assert isinstance(event, Message.RetryRequested), "only a retry may follow Failed"
        if isinstance(previous, Message.Attempted):
            assert isinstance(event, OUTCOMES), "Attempted must be followed by its outcome"
            assert event.attempt == previous.attempt
        else:
            assert not isinstance(event, OUTCOMES), "an outcome without an attempt in flight"
        if isinstance(event, Message.RetryRequested):
            assert isinstance(previous, Message.Failed)
            cycle, retry_at = 0, None
        if isinstance(event, Message.Attempted):
            attempt += 1
            cycle += 1
            assert event.attempt == attempt, "attempt numbers must increase by one"
            assert cycle <= max_attempts
            assert retry_at is None or event.timestamp >= retry_at, "attempt before retry_at"
            retry_at = None
        if isinstance(event, Message.BackedOff) and event.throttled:
            assert event.status_code == 429
            cycle -= 1  # a 429 is the provider's pace: it counts no attempt, exhausts nothing
        elif isinstance(event, Message.BackedOff):
            assert cycle < max_attempts, "backed off although the cycle was exhausted"
        if isinstance(event, Message.BackedOff):
            assert event.retry_at == event.timestamp + timedelta(seconds=event.delay_seconds)
            retry_at = event.retry_at
        if isinstance(event, Message.Failed) and not event.permanent:
            assert cycle == max_attempts, "failed as exhausted before the cycle was spent"


# --- Received and ids -----------------------------------------------------------------------


def test_receiving_records_a_received_event_with_every_request_field():
    message = a_message(
        message_id="order-42",
        channel="im",
        to="@alice",
        body="hello",
        correlation_id="corr-1",
        sender="bot",
        metadata={"k": "v"},
        provider="beta",
    )

    [received] = events(message)
    assert isinstance(received, Message.Received)
    assert (received.message_id, received.channel, received.to, received.body) == (
        "order-42",
        "im",
        "@alice",
        "hello",
    )
    assert (received.sender, received.metadata, received.provider) == ("bot", {"k": "v"}, "beta")
    assert received.correlation_id == "corr-1"
    assert received.timestamp == T0
    assert received.originator_version == 1


def test_received_message_is_waiting_for_its_first_attempt():
    message = a_message()

    assert (message.status, message.attempts, message.cycle_attempts) == ("received", 0, 0)
    assert message.retry_at is None
    assert not message.is_final


def test_received_metadata_is_a_copy_of_the_callers_dict():
    # Given
    metadata = {"k": "v"}

    # When
    message = a_message(metadata=metadata)
    metadata["k"] = "changed"

    # Then
    assert message.metadata == {"k": "v"}


def test_receiving_without_metadata_records_an_empty_dict():
    assert a_message(metadata=None).metadata == {}


def test_create_id_is_the_uuid5_of_the_message_id_in_the_fixed_namespace():
    assert Message.create_id("order-42") == uuid5(MESSAGE_NAMESPACE, "order-42")
    assert Message.create_id("order-42").version == 5


def test_create_id_is_deterministic():
    assert Message.create_id("order-42") == Message.create_id("order-42")


def test_different_message_ids_give_different_aggregate_ids():
    ids = {Message.create_id(f"order-{n}") for n in range(1000)}

    assert len(ids) == 1000


def test_received_message_is_stored_under_the_create_id_of_its_message_id():
    message = a_message(message_id="order-42")

    assert message.id == Message.create_id("order-42")
    assert isinstance(message.id, UUID)


# --- attempts and outcomes ------------------------------------------------------------------


def test_first_attempt_is_numbered_one_and_puts_the_message_in_flight():
    message = a_message()

    message.start_attempt("alpha", now=T0)

    attempted = events(message)[-1]
    assert isinstance(attempted, Message.Attempted)
    assert (attempted.attempt, attempted.provider) == (1, "alpha")
    assert (message.status, message.attempts, message.cycle_attempts) == ("in_flight", 1, 1)
    assert message.last_provider == "alpha"
    assert message.attempted_at == T0


def test_a_second_attempt_while_one_is_in_flight_is_refused():
    message = in_flight()

    with pytest.raises(AttemptOutcomePendingError, match="attempt 1 has no outcome"):
        message.start_attempt("alpha", now=T0 + timedelta(hours=1))


OUTCOME_COMMANDS: dict[str, Callable[[Message], None]] = {
    "delivery": lambda m: m.record_delivery("p-1", now=T0),
    "permanent failure": lambda m: m.record_permanent_failure("bad", error="http 400", now=T0),
    "transient failure": lambda m: m.record_transient_failure(
        "timeout", error="timeout", policy=POLICY, now=T0
    ),
    "interruption": lambda m: m.record_interruption(policy=POLICY, now=T0),
}


@pytest.mark.parametrize("outcome", OUTCOME_COMMANDS.values(), ids=OUTCOME_COMMANDS.keys())
def test_an_outcome_without_an_attempt_is_refused(outcome):
    message = a_message()

    with pytest.raises(NoAttemptInFlightError):
        outcome(message)


@pytest.mark.parametrize("outcome", OUTCOME_COMMANDS.values(), ids=OUTCOME_COMMANDS.keys())
def test_a_second_outcome_for_the_same_attempt_is_refused(outcome):
    # Given an attempt that already has its outcome (a back-off)
    message = backed_off()

    # When / Then
    with pytest.raises(NoAttemptInFlightError):
        outcome(message)


@pytest.mark.parametrize(
    ("build", "command", "error"),
    [
        (in_flight, lambda m: m.start_attempt("alpha", now=T0), AttemptOutcomePendingError),
        (a_message, OUTCOME_COMMANDS["delivery"], NoAttemptInFlightError),
        (delivered, OUTCOME_COMMANDS["delivery"], MessageAlreadyFinalError),
        (failed, lambda m: m.start_attempt("alpha", now=T0), MessageAlreadyFinalError),
        (a_message, lambda m: m.request_retry("ops", now=T0), NotFailedError),
        (
            backed_off,
            lambda m: m.start_attempt("alpha", now=T0 + timedelta(seconds=59)),
            RetryNotDueError,
        ),
    ],
)
def test_a_refused_command_records_nothing_and_changes_nothing(build, command, error):
    # Given
    message = build()
    before, pending = state(message), len(events(message))

    # When
    with pytest.raises(error):
        command(message)

    # Then
    assert state(message) == before
    assert len(events(message)) == pending


def test_every_domain_refusal_is_a_domain_error():
    for error in (
        AttemptOutcomePendingError,
        MessageAlreadyFinalError,
        NoAttemptInFlightError,
        NotFailedError,
        RetryNotDueError,
    ):
        assert issubclass(error, InvalidTransitionError)
        assert issubclass(error, DomainError)


# --- Delivered ------------------------------------------------------------------------------


def test_delivery_records_the_provider_message_id_attempt_provider_and_latency():
    message = in_flight()

    message.record_delivery("prov-77", now=T0 + timedelta(seconds=1), latency_ms=12.5)

    event = events(message)[-1]
    assert isinstance(event, Message.Delivered)
    assert (event.attempt, event.provider, event.provider_message_id, event.latency_ms) == (
        1,
        "alpha",
        "prov-77",
        12.5,
    )
    assert (message.status, message.provider_message_id) == ("delivered", "prov-77")
    assert message.is_final


FINAL_COMMANDS: dict[str, Callable[[Message], None]] = {
    "start_attempt": lambda m: m.start_attempt("alpha", now=T0 + timedelta(days=1)),
    **OUTCOME_COMMANDS,
}


@pytest.mark.parametrize("command", FINAL_COMMANDS.values(), ids=FINAL_COMMANDS.keys())
def test_nothing_may_follow_delivered(command):
    message = delivered()

    with pytest.raises(MessageAlreadyFinalError, match="already delivered"):
        command(message)


def test_retry_of_a_delivered_message_is_refused_as_already_final():
    """errors.py: MessageAlreadyFinalError means "Nothing may follow Delivered"."""
    message = delivered()

    with pytest.raises(MessageAlreadyFinalError):
        message.request_retry("ops", now=T0)


def test_retry_of_a_delivered_message_is_refused_and_records_nothing():
    message = delivered()

    with pytest.raises(InvalidTransitionError):
        message.request_retry("ops", now=T0)

    assert message.status == "delivered"
    assert not isinstance(events(message)[-1], Message.RetryRequested)


# --- Failed ---------------------------------------------------------------------------------


def test_permanent_failure_fails_at_once_as_permanent():
    # Given a policy that would allow many more attempts
    message = in_flight()

    # When
    message.record_permanent_failure("rejected", error="http 400 bad number", now=T0, status_code=400)

    # Then
    event = events(message)[-1]
    assert isinstance(event, Message.Failed)
    assert event.permanent is True
    assert (event.attempt, event.reason, event.error, event.status_code) == (
        1,
        "rejected",
        "http 400 bad number",
        400,
    )
    assert (message.status, message.permanent, message.last_error) == ("failed", True, "rejected")
    assert message.is_final


@pytest.mark.parametrize("command", FINAL_COMMANDS.values(), ids=FINAL_COMMANDS.keys())
def test_only_a_retry_request_may_follow_failed(command):
    message = failed()

    with pytest.raises(MessageAlreadyFinalError, match="already failed"):
        command(message)


def test_a_retry_request_is_accepted_after_failed():
    message = failed()

    message.request_retry("ops@example.com", now=T0 + timedelta(minutes=5))

    event = events(message)[-1]
    assert isinstance(event, Message.RetryRequested)
    assert event.requested_by == "ops@example.com"
    assert (message.status, message.cycle_attempts, message.permanent) == ("received", 0, False)
    assert not message.is_final


@pytest.mark.parametrize("build", [a_message, in_flight, backed_off], ids=lambda f: f.__name__)
def test_a_retry_request_for_a_message_that_has_not_failed_is_refused(build):
    message = build()

    with pytest.raises(NotFailedError, match="not failed"):
        message.request_retry("ops", now=T0)


# --- back-off -------------------------------------------------------------------------------


def test_transient_failure_backs_off_and_records_policy_delay_retry_at_status_and_latency():
    # Given
    message = in_flight()
    now = T0 + timedelta(seconds=2)

    # When
    message.record_transient_failure(
        "provider_unavailable",
        error="http 503",
        policy=POLICY,
        now=now,
        status_code=503,
        latency_ms=420.0,
    )

    # Then
    event = events(message)[-1]
    assert isinstance(event, Message.BackedOff)
    assert event.policy == {
        "initial": 60.0,
        "factor": 3.0,
        "max_delay": 3600.0,
        "max_attempts": 5,
        "jitter": 0.0,
    }
    assert event.delay_seconds == 60.0
    assert event.retry_at == now + timedelta(seconds=60)
    assert (event.status_code, event.latency_ms) == (503, 420.0)
    assert (event.attempt, event.reason, event.error) == (1, "provider_unavailable", "http 503")
    assert (message.status, message.retry_at, message.last_error) == (
        "backed_off",
        now + timedelta(seconds=60),
        "provider_unavailable",
    )
    assert not message.is_final


def test_provider_retry_after_raises_the_recorded_delay():
    message = in_flight()

    message.record_transient_failure(
        "throttled", error="http 429", policy=POLICY, now=T0, status_code=429, retry_after=300
    )

    event = events(message)[-1]
    assert event.delay_seconds == 300.0
    assert event.retry_at == T0 + timedelta(seconds=300)


def test_jittered_delay_comes_from_the_injected_random_source():
    # Given
    policy = BackoffPolicy(jitter=0.5)
    expected = policy.delay(1, rng=random.Random(42))
    message = in_flight()

    # When
    message.record_transient_failure("timeout", error="t", policy=policy, now=T0, rng=random.Random(42))

    # Then
    assert events(message)[-1].delay_seconds == expected
    assert events(message)[-1].policy["jitter"] == 0.5


def test_delays_grow_with_the_attempt_number_of_the_cycle():
    # Given
    message = a_message()
    now = T0

    # When four attempts fail transiently, each retried as soon as it is due
    for _ in range(4):
        message.start_attempt("alpha", now=now)
        message.record_transient_failure("timeout", error="t", policy=POLICY, now=now)
        now = message.retry_at

    # Then
    backed_off_events = [e for e in events(message) if isinstance(e, Message.BackedOff)]
    assert [e.delay_seconds for e in backed_off_events] == [60.0, 180.0, 540.0, 1620.0]
    assert [e.attempt for e in backed_off_events] == [1, 2, 3, 4]


def test_an_attempt_before_retry_at_is_refused():
    with freeze_time("2026-03-01 12:00:00") as clock:
        # Given a back-off of 60 s
        message = in_flight(now=utcnow())
        message.record_transient_failure("timeout", error="t", policy=POLICY, now=utcnow())

        # When 59 s have passed
        clock.tick(59)

        # Then
        with pytest.raises(RetryNotDueError, match="2026-03-01T12:01:00"):
            message.start_attempt("alpha", now=utcnow())
        assert message.status == "backed_off"


def test_an_attempt_exactly_at_retry_at_is_allowed():
    with freeze_time("2026-03-01 12:00:00") as clock:
        # Given a back-off of 60 s
        message = in_flight(now=utcnow())
        message.record_transient_failure("timeout", error="t", policy=POLICY, now=utcnow())

        # When exactly 60 s have passed
        clock.tick(60)
        message.start_attempt("alpha", now=utcnow())

        # Then
        assert events(message)[-1].attempt == 2
        assert message.attempted_at == datetime(2026, 3, 1, 12, 1, tzinfo=timezone.utc)
        assert message.retry_at is None


def test_an_attempt_after_retry_at_is_allowed():
    with freeze_time("2026-03-01 12:00:00") as clock:
        message = in_flight(now=utcnow())
        message.record_transient_failure("timeout", error="t", policy=POLICY, now=utcnow())

        clock.tick(3600)
        message.start_attempt("beta", now=utcnow())

        assert (message.status, message.last_provider) == ("in_flight", "beta")


def test_max_attempts_transient_failures_exhaust_the_cycle_as_a_non_permanent_failure():
    # Given
    policy = BackoffPolicy(max_attempts=3)
    message = a_message()
    now = T0

    # When three attempts fail transiently
    for _ in range(3):
        message.start_attempt("alpha", now=now)
        message.record_transient_failure(
            "timeout", error="read timeout", policy=policy, now=now, status_code=504
        )
        now = message.retry_at or now

    # Then the first two back off and the third fails
    kinds = [type(e).__name__ for e in events(message)]
    assert kinds == [
        "Received",
        "Attempted",
        "BackedOff",
        "Attempted",
        "BackedOff",
        "Attempted",
        "Failed",
    ]
    failed_event = events(message)[-1]
    assert failed_event.permanent is False
    assert (failed_event.attempt, failed_event.reason, failed_event.status_code) == (
        3,
        "timeout",
        504,
    )
    assert (message.status, message.permanent) == ("failed", False)


def test_a_single_attempt_policy_fails_on_the_first_transient_failure():
    message = in_flight()

    message.record_transient_failure("timeout", error="t", policy=BackoffPolicy(max_attempts=1), now=T0)

    assert isinstance(events(message)[-1], Message.Failed)
    assert events(message)[-1].permanent is False


# --- interruption ---------------------------------------------------------------------------


def test_an_interrupted_attempt_backs_off_for_zero_seconds_with_reason_interrupted():
    with freeze_time("2026-03-01 12:00:00"):
        # Given
        message = in_flight(now=utcnow())

        # When
        message.record_interruption(policy=POLICY, now=utcnow())

        # Then
        event = events(message)[-1]
        assert isinstance(event, Message.BackedOff)
        assert (event.reason, event.error, event.delay_seconds) == ("interrupted", "Interrupted", 0)
        assert event.retry_at == utcnow()
        assert (event.status_code, event.latency_ms) == (None, None)
        assert event.policy == POLICY.as_dict()


def test_the_next_attempt_after_an_interruption_is_due_at_once():
    with freeze_time("2026-03-01 12:00:00"):
        message = in_flight(now=utcnow())
        message.record_interruption(policy=POLICY, now=utcnow())

        message.start_attempt("alpha", now=utcnow())

        assert events(message)[-1].attempt == 2


def test_an_interruption_counts_toward_the_cycle_and_fails_when_it_was_the_last_attempt():
    # Given
    policy = BackoffPolicy(max_attempts=2)
    message = in_flight()
    message.record_interruption(policy=policy, now=T0)
    message.start_attempt("alpha", now=T0)

    # When
    message.record_interruption(policy=policy, now=T0)

    # Then
    event = events(message)[-1]
    assert isinstance(event, Message.Failed)
    assert (event.reason, event.permanent, event.attempt) == ("interrupted", False, 2)
    assert message.status == "failed"


def test_an_interruption_without_an_attempt_in_flight_is_refused():
    with pytest.raises(NoAttemptInFlightError):
        backed_off().record_interruption(policy=POLICY, now=T0)


# --- retry cycles ---------------------------------------------------------------------------


def test_the_first_attempt_after_a_retry_request_is_immediate():
    with freeze_time("2026-03-01 12:00:00"):
        # Given a cycle exhausted by transient failures (the last one set a retry_at)
        policy = BackoffPolicy(max_attempts=1)
        message = in_flight(now=utcnow())
        message.record_transient_failure("timeout", error="t", policy=policy, now=utcnow())

        # When a retry is requested and an attempt starts in the same instant
        message.request_retry("ops", now=utcnow())
        message.start_attempt("alpha", now=utcnow())

        # Then
        assert (message.status, message.cycle_attempts) == ("in_flight", 1)


def test_attempt_numbers_increase_by_one_over_the_whole_history_across_retry_cycles():
    # Given a policy of two attempts per cycle
    policy = BackoffPolicy(initial=10, max_attempts=2)
    message = a_message()
    now = T0

    # When two cycles are exhausted and a third delivers on its first attempt
    cycle_counts = []
    for _cycle in range(2):
        for _ in range(2):
            message.start_attempt("alpha", now=now)
            cycle_counts.append(message.cycle_attempts)
            message.record_transient_failure("timeout", error="t", policy=policy, now=now)
            now = message.retry_at or now
        message.request_retry("ops", now=now)
    message.start_attempt("alpha", now=now)
    cycle_counts.append(message.cycle_attempts)
    message.record_delivery("prov-1", now=now)

    # Then
    attempted = [e.attempt for e in events(message) if isinstance(e, Message.Attempted)]
    assert attempted == [1, 2, 3, 4, 5]
    assert cycle_counts == [1, 2, 1, 2, 1]
    assert message.attempts == 5
    assert events(message)[-1].attempt == 5
    assert_history_follows_rules(events(message), max_attempts=2)


def test_a_retry_cycle_gets_its_own_full_set_of_attempts():
    # Given a message failed by exhaustion after two attempts
    policy = BackoffPolicy(initial=0, max_attempts=2)
    message = a_message()
    for _ in range(2):
        message.start_attempt("alpha", now=T0)
        message.record_transient_failure("timeout", error="t", policy=policy, now=T0)
    message.request_retry("ops", now=T0)

    # When the new cycle's first attempt fails transiently
    message.start_attempt("alpha", now=T0)
    message.record_transient_failure("timeout", error="t", policy=policy, now=T0)

    # Then it backs off (delay of the cycle's attempt 1) instead of failing
    event = events(message)[-1]
    assert isinstance(event, Message.BackedOff)
    assert event.attempt == 3


def test_a_retry_after_a_permanent_failure_clears_the_permanent_flag():
    message = failed()

    message.request_retry("ops", now=T0)

    assert message.permanent is False
    assert message.status == "received"


# --- correlation and replay -----------------------------------------------------------------


def full_lifecycle() -> Message:
    """Received, back-off, interruption, exhaustion, retry, permanent failure, retry, delivery."""
    policy = BackoffPolicy(initial=30, max_attempts=3)
    message = a_message(correlation_id="corr-life")
    now = T0
    message.start_attempt("alpha", now=now)
    message.record_transient_failure(
        "http", error="503", policy=policy, now=now, status_code=503, latency_ms=80.0
    )
    now = message.retry_at
    message.start_attempt("beta", now=now)
    message.record_interruption(policy=policy, now=now)
    message.start_attempt("alpha", now=now)
    message.record_transient_failure("http", error="503", policy=policy, now=now)
    message.request_retry("ops", now=now + timedelta(minutes=1))
    message.start_attempt("alpha", now=now + timedelta(minutes=1))
    message.record_permanent_failure("rejected", error="400", now=now + timedelta(minutes=2))
    message.request_retry("redrive", now=now + timedelta(minutes=3))
    message.start_attempt("beta", now=now + timedelta(minutes=3))
    message.record_delivery("prov-9", now=now + timedelta(minutes=4), latency_ms=15.0)
    return message


def test_a_full_lifecycle_history_follows_every_rule():
    history = events(full_lifecycle())

    assert [type(e).__name__ for e in history] == [
        "Received",
        "Attempted",
        "BackedOff",
        "Attempted",
        "BackedOff",
        "Attempted",
        "Failed",
        "RetryRequested",
        "Attempted",
        "Failed",
        "RetryRequested",
        "Attempted",
        "Delivered",
    ]
    assert_history_follows_rules(history, max_attempts=3)


def test_every_event_carries_the_requests_correlation_id():
    history = events(full_lifecycle())

    assert {e.correlation_id for e in history} == {"corr-life"}


def test_replaying_the_events_rebuilds_the_same_state():
    # Given
    message = full_lifecycle()

    # When
    rebuilt = replay(events(message))

    # Then
    assert state(rebuilt) == state(message)
    assert rebuilt.status == "delivered"
    assert rebuilt.attempts == 5


@pytest.fixture
def memory_store() -> Iterator[MessageStore]:
    store = MessageStore("sqlite://")
    yield store
    store.close()


@pytest.fixture
def frozen_time_store(fake_datetime_transcoding: None) -> Iterator[MessageStore]:
    """An in-memory store that can save events stamped under freeze_time (library-notes G2)."""
    store = MessageStore("sqlite://")
    yield store
    store.close()


def test_saving_under_frozen_time_and_reloading_gives_the_same_state(frozen_time_store):
    with freeze_time("2026-03-01 12:00:00") as clock:
        # Given a message stamped with frozen (FakeDatetime) times
        message = in_flight(now=utcnow())
        message.record_transient_failure("timeout", error="t", policy=POLICY, now=utcnow())
        clock.tick(60)
        message.start_attempt("beta", now=utcnow())
        expected = state(message)

        # When
        [outcome] = frozen_time_store.commit([Change(load=lambda: message)])
        reloaded = frozen_time_store.get(message.id)

    # Then
    assert outcome.saved
    assert state(reloaded) == expected
    assert reloaded.attempted_at == datetime(2026, 3, 1, 12, 1, tzinfo=timezone.utc)


def test_saving_a_full_lifecycle_and_reloading_gives_the_same_state(memory_store):
    # Given
    message = full_lifecycle()
    history, expected = events(message), state(message)

    # When
    memory_store.commit([Change(load=lambda: message)])

    # Then
    assert state(memory_store.get(message.id)) == expected
    assert memory_store.history(message.id) == history


# --- any accepted sequence of commands follows the rules ------------------------------------

machine_policies = st.builds(
    BackoffPolicy,
    initial=st.floats(min_value=0, max_value=600),
    factor=st.floats(min_value=1, max_value=3),
    max_delay=st.floats(min_value=0, max_value=3600),
    max_attempts=st.integers(min_value=1, max_value=4),
    jitter=st.floats(min_value=0, max_value=0.5),
)


class MessageCommands(RuleBasedStateMachine):
    """Random command sequences: each is accepted exactly when the rules allow it."""

    @initialize(policy=machine_policies, seed=st.integers(0, 2**32))
    def receive(self, policy: BackoffPolicy, seed: int) -> None:
        self.policy = policy
        self.rng = random.Random(seed)
        self.now = T0
        self.message = a_message(correlation_id="corr-machine")
        self.history = list(self.message.collect_events())

    # expected behaviour, from the history alone

    def _expected_refusal(self, command: str) -> type[Exception] | None:
        last = self.history[-1]
        if command == "request_retry":
            if isinstance(last, Message.Failed):
                return None
            # Delivered: see test_retry_of_a_delivered_message_is_refused_as_already_final
            return InvalidTransitionError if isinstance(last, Message.Delivered) else NotFailedError
        if isinstance(last, Message.Delivered | Message.Failed):
            return MessageAlreadyFinalError
        if command == "start_attempt":
            if isinstance(last, Message.Attempted):
                return AttemptOutcomePendingError
            if isinstance(last, Message.BackedOff) and self.now < last.retry_at:
                return RetryNotDueError
            return None
        return None if isinstance(last, Message.Attempted) else NoAttemptInFlightError

    def _expected_event(self, command: str) -> type[Any]:
        if command == "throttled":
            since_retry = list(
                itertools.takewhile(
                    lambda e: not isinstance(e, Message.RetryRequested), reversed(self.history)
                )
            )
            throttles = sum(1 for e in since_retry if isinstance(e, Message.BackedOff) and e.throttled)
            if throttles < self.policy.max_attempts:
                return Message.BackedOff
            command = "transient"
        if command in ("transient", "interruption"):
            exhausted = cycle_attempts_at_end(self.history) >= self.policy.max_attempts
            return Message.Failed if exhausted else Message.BackedOff
        return {
            "start_attempt": Message.Attempted,
            "delivery": Message.Delivered,
            "permanent": Message.Failed,
            "request_retry": Message.RetryRequested,
        }[command]

    def _run(self, command: str, action: Callable[[], None]) -> None:
        refusal = self._expected_refusal(command)
        if refusal is not None:
            before = state(self.message)
            with pytest.raises(refusal):
                action()
            assert state(self.message) == before
            assert not self.message.pending_events
            return
        action()
        new = self.message.collect_events()
        assert [type(e) for e in new] == [self._expected_event(command)]
        self.history.extend(new)

    # commands

    @rule(seconds=st.integers(min_value=0, max_value=4000))
    def time_passes(self, seconds: int) -> None:
        self.now += timedelta(seconds=seconds)

    @rule()
    def wait_until_retry_is_due(self) -> None:
        if self.message.retry_at is not None and self.message.retry_at > self.now:
            self.now = self.message.retry_at

    @rule(provider=st.sampled_from(["alpha", "beta"]))
    def start_attempt(self, provider: str) -> None:
        self._run("start_attempt", lambda: self.message.start_attempt(provider, now=self.now))

    @rule(latency=st.none() | st.floats(min_value=0, max_value=5000))
    def deliver(self, latency: float | None) -> None:
        self._run(
            "delivery",
            lambda: self.message.record_delivery("prov-1", now=self.now, latency_ms=latency),
        )

    @rule(status=st.sampled_from([None, 400, 401, 404, 422]))
    def fail_permanently(self, status: int | None) -> None:
        self._run(
            "permanent",
            lambda: self.message.record_permanent_failure(
                "rejected", error="refused", now=self.now, status_code=status
            ),
        )

    @rule(
        status=st.sampled_from([None, 429, 500, 503]),
        retry_after=st.none() | st.integers(min_value=0, max_value=7200),
    )
    def fail_transiently(self, status: int | None, retry_after: int | None) -> None:
        self._run(
            "throttled" if status == 429 else "transient",
            lambda: self.message.record_transient_failure(
                "unavailable",
                error="http error",
                policy=self.policy,
                now=self.now,
                status_code=status,
                retry_after=retry_after,
                rng=self.rng,
            ),
        )

    @rule()
    def interrupt(self) -> None:
        self._run("interruption", lambda: self.message.record_interruption(policy=self.policy, now=self.now))

    @rule()
    def request_retry(self) -> None:
        self._run("request_retry", lambda: self.message.request_retry("ops", now=self.now))

    # invariants

    @invariant()
    def history_follows_the_rules(self) -> None:
        assert_history_follows_rules(self.history, max_attempts=self.policy.max_attempts)

    @invariant()
    def replaying_the_history_gives_the_current_state(self) -> None:
        assert state(replay(self.history)) == state(self.message)


MessageCommands.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
TestAnyAcceptedCommandSequenceFollowsTheRules = MessageCommands.TestCase


def test_due_at_says_when_a_message_should_next_be_looked_at():
    start = datetime(2026, 5, 1, 12, 0, tzinfo=timezone.utc)
    message = Message.receive(
        message_id="due-1", channel="sms", to="+441234560123", body="x", correlation_id="c", now=start
    )
    assert message.due_at(30) == start
    message.start_attempt("p", now=start)
    assert message.due_at(30) == start + timedelta(seconds=30)
    message.record_transient_failure("http 503", error="E", policy=BackoffPolicy(initial=60), now=start)
    assert message.due_at(30) == start + timedelta(seconds=60)
    message.start_attempt("p", now=start + timedelta(seconds=60))
    message.record_delivery("pid", now=start + timedelta(seconds=61))
    assert message.due_at(30) is None


def test_receive_builds_what_the_librarys_generic_create_and_mutate_build() -> None:
    # Given the same request, through Message.receive and through eventsourcing's own _create
    fields: dict[str, Any] = dict(
        message_id="order-7",
        channel="sms",
        to="+447700900123",
        sender="ACME",
        body="hi",
        metadata={"k": "v"},
        provider="alpha",
        correlation_id="corr-7",
    )
    fast = Message.receive(now=T0, **fields)
    generic = Message._create(Message.Received, id=Message.create_id("order-7"), timestamp=T0, **fields)

    # Then: the same state and the same pending event
    def state(message: Message) -> dict[str, Any]:
        return {k: v for k, v in vars(message).items() if k != "_pending_events"}

    assert state(fast) == state(generic)
    assert vars(fast.pending_events[0]) == vars(generic.pending_events[0])

    # And the event rebuilds the same aggregate as the library's generic mutate would
    [event] = fast.collect_events()
    rebuilt = event.mutate(None)
    library = super(Message.Received, event).mutate(None)
    assert state(rebuilt) == state(library) == state(fast)
