"""What the statistics projections know of a message: where it stands (outcome, handling provider),
event kinds told by class, recovery from the message's history."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from uuid import UUID

from eventsourcing.domain import DomainEvent

from adapters.message_facts import (
    ATTEMPTED,
    DELIVERED_FIRST,
    DELIVERED_RETRIED,
    FAILED_PERMANENT,
    OTHER,
    PENDING,
    MessageFacts,
    kind_of,
)
from domain.message import Message

T0 = datetime(2024, 6, 1, 10, tzinfo=timezone.utc)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def received(name: str, provider: str | None = None) -> Message:
    return Message.receive(
        message_id=name, channel="sms", to="+4411", body="hi", correlation_id="c", now=T0, provider=provider
    )


def fold(facts: MessageFacts, events: Sequence[DomainEvent]) -> None:
    for event in events:
        facts.observe(event, kind_of(event))


def no_history(ids: Collection[UUID]) -> Mapping[UUID, Sequence[DomainEvent]]:
    raise AssertionError(f"history read for {ids}")


def test_a_message_stands_under_the_provider_it_was_asked_for_then_held_for_then_attempted_by() -> None:
    # Given a message that asked for alpha
    message, facts = received("m1", provider="alpha"), MessageFacts()
    fold(facts, message.collect_events())
    state = facts.get(message.id)
    assert state is not None and (state.handler, state.outcome, state.provider) == ("alpha", PENDING, "")

    # When it is held for beta, then attempted by gamma and delivered on that first attempt
    message.hold("beta", until=at(5), reason="circuit open", now=at(1))
    fold(facts, message.collect_events())
    assert (state.handler, state.outcome) == ("beta", PENDING)
    message.start_attempt("gamma", now=at(6))
    message.record_delivery("p1", now=at(7))
    fold(facts, message.collect_events())

    # Then it stands delivered first try under gamma, and is dropped before the next batch
    assert (state.handler, state.outcome, state.provider, state.ended) == (
        "gamma",
        DELIVERED_FIRST,
        "gamma",
        True,
    )
    facts.load([], no_history)
    assert facts.get(message.id) is None


def test_a_retried_failure_is_pending_again_and_its_next_delivery_counts_as_after_a_retry() -> None:
    message, facts = received("m2"), MessageFacts()
    message.start_attempt("alpha", now=at(1))
    message.record_permanent_failure("blocked", error="e", now=at(2))
    fold(facts, message.collect_events())
    state = facts.get(message.id)
    assert state is not None and (state.handler, state.outcome) == ("alpha", FAILED_PERMANENT)

    message.request_retry("ops", now=at(10))
    fold(facts, message.collect_events())
    assert (state.outcome, state.ended) == (PENDING, False)

    message.start_attempt("beta", now=at(11))
    message.record_delivery("p2", now=at(12))
    fold(facts, message.collect_events())
    assert (state.handler, state.outcome) == ("beta", DELIVERED_RETRIED)


def test_load_recovers_a_message_from_its_history_and_standing_says_where_each_stood() -> None:
    # Given a message attempted in an earlier batch this process never saw, and one new message
    old, new = received("old", provider="alpha"), received("new")
    old.start_attempt("beta", now=at(1))
    earlier = old.collect_events()
    old.record_delivery("p", now=at(2))
    batch = [*old.collect_events(), *new.collect_events()]
    asked: list[Collection[UUID]] = []

    def history(ids: Collection[UUID]) -> Mapping[UUID, Sequence[DomainEvent]]:
        asked.append(ids)
        return {old.id: earlier}

    # When the batch is loaded
    facts = MessageFacts()
    first = facts.load(batch, history)

    # Then only the old message's history was read (by its UUID), and it stood pending under beta
    assert asked == [[old.id]]
    assert facts.standing(first) == {old.id.int: ("beta", PENDING), new.id.int: None}


def test_event_kinds_are_told_by_class_and_a_subclass_is_learnt_once() -> None:
    message = received("m3")
    message.start_attempt("alpha", now=at(1))
    attempted = message.collect_events()[-1]
    assert kind_of(attempted) == ATTEMPTED

    class Renamed(Message.Attempted):  # e.g. an event class registered under an older topic
        pass

    assert kind_of(object.__new__(Renamed)) == ATTEMPTED
    assert kind_of(object.__new__(DomainEvent)) == OTHER
