"""Held: a message waits for its provider instead of being attempted; nothing counted, nothing exhausted."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from functools import reduce
from typing import Any

import pytest

from domain.backoff import BackoffPolicy
from domain.errors import AttemptOutcomePendingError, MessageAlreadyFinalError, StillHeldError
from domain.message import BACKED_OFF, FAILED, HELD, IN_FLIGHT, Message

T0 = datetime(2026, 12, 7, 12, 0, tzinfo=timezone.utc)
POLICY = BackoffPolicy(initial=60, factor=3, max_attempts=3)


def a_message() -> Message:
    return Message.receive(
        message_id="m-1", channel="sms", to="+441234560123", body="hi", correlation_id="c-1", now=T0
    )


def replayed(message: Message) -> Message:
    rebuilt: Any = reduce(lambda aggregate, event: event.mutate(aggregate), message.collect_events(), None)
    return rebuilt


def test_a_held_message_waits_with_no_attempt_counted() -> None:
    message = a_message()
    until = T0 + timedelta(minutes=20)
    message.hold("a", until=until, reason="circuit open", now=T0)
    assert (message.status, message.retry_at, message.held) == (HELD, until, ("a", "circuit open"))
    assert (message.attempts, message.cycle_attempts) == (0, 0)
    assert message.due_at(stale_after=60) == until
    assert not message.is_final


def test_one_held_per_wait_but_a_new_reason_is_recorded() -> None:
    message = a_message()
    message.hold("a", until=T0 + timedelta(seconds=30), reason="circuit open", now=T0)
    with pytest.raises(StillHeldError):
        message.hold(
            "a", until=T0 + timedelta(seconds=90), reason="circuit open", now=T0 + timedelta(seconds=30)
        )
    message.hold(
        "a", until=T0 + timedelta(seconds=95), reason="disabled by alice", now=T0 + timedelta(seconds=35)
    )
    assert [type(e).__name__ for e in message.collect_events()] == ["Received", "Held", "Held"]


def test_a_held_message_starts_once_its_provider_takes_attempts_whatever_the_clock() -> None:
    message = a_message()
    message.hold("a", until=T0 + timedelta(minutes=20), reason="disabled", now=T0)
    message.start_attempt("a", now=T0 + timedelta(minutes=1))  # enabled before the re-check time
    assert (message.status, message.attempts, message.held) == (IN_FLIGHT, 1, None)


def test_a_long_hold_exhausts_nothing() -> None:
    message = a_message()
    now = T0
    for _ in range(2):  # two transient failures: one attempt left in this cycle
        message.start_attempt("a", now=now)
        message.record_transient_failure("503", error="E", policy=POLICY, now=now)
        assert message.retry_at is not None
        now = message.retry_at
    message.hold("a", until=now + timedelta(hours=6), reason="circuit open", now=now)
    message.hold(
        "a", until=now + timedelta(hours=6), reason="still open, re-opened", now=now + timedelta(hours=3)
    )
    assert message.cycle_attempts == 2 and message.status == HELD
    message.start_attempt("a", now=now + timedelta(hours=6))
    message.record_transient_failure("503", error="E", policy=POLICY, now=now + timedelta(hours=6))
    assert message.status == FAILED  # the third real attempt ends the cycle, not the hours held


def test_no_hold_while_an_attempt_is_in_flight_or_after_the_end() -> None:
    message = a_message()
    message.start_attempt("a", now=T0)
    with pytest.raises(AttemptOutcomePendingError):
        message.hold("a", until=T0, reason="circuit open", now=T0)
    message.record_delivery("p-1", now=T0)
    with pytest.raises(MessageAlreadyFinalError):
        message.hold("a", until=T0, reason="circuit open", now=T0)


def test_a_backed_off_message_may_be_held_and_its_history_replays() -> None:
    message = a_message()
    message.start_attempt("a", now=T0)
    message.record_transient_failure("503", error="E", policy=POLICY, now=T0)
    assert message.status == BACKED_OFF
    message.hold("a", until=T0 + timedelta(minutes=5), reason="circuit open", now=T0 + timedelta(minutes=1))
    rebuilt = replayed(message)
    assert vars(rebuilt) == vars(message)
    assert rebuilt.status == HELD and rebuilt.held == ("a", "circuit open")


def test_a_failed_trial_counts_no_attempt_even_on_a_message_never_attempted() -> None:
    message = a_message()
    message.hold("a", until=T0 + timedelta(minutes=1), reason="circuit open", now=T0)
    for minute in range(1, 6):  # more failed trials than the cycle allows attempts
        now = T0 + timedelta(minutes=minute)
        message.start_attempt("a", now=now, trial=True)
        message.record_transient_failure("503", error="E", policy=POLICY, now=now)
        assert message.status == BACKED_OFF and message.retry_at == now + timedelta(seconds=60)
    assert (message.attempts, message.cycle_attempts) == (5, 0)
    message.start_attempt("a", now=T0 + timedelta(minutes=10))
    assert message.cycle_attempts == 1
