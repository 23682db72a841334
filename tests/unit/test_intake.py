"""The intake actor acks only what is durable (or a known duplicate) and hands back the rest; it rides
out a short store outage and reports a long one (on the in-memory event store of tests/fakes.py)."""

from __future__ import annotations

import queue
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

import pykka

from adapters.event_store import Change, Outcome
from domain.errors import DomainError
from domain.message import Message
from domain.ports import Delivery
from domain.request import parse_send_request
from smeg_actors.actors.intake import IntakeActor
from smeg_actors.actors.messages import DeliverMessages, GetCounts, RequestsReceived
from smeg_actors.actors.supervisor import Children
from tests.fakes import InMemoryMessageStore

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)


class ScriptedStore:
    """Builds each change's aggregate, then answers with the scripted outcome kinds.

    Kept beside InMemoryMessageStore: a receive change is never refused nor missing in a real
    store, so only a script can make those outcomes (the ones the intake must release)."""

    def __init__(self, kinds: list[str]) -> None:
        self.kinds = kinds

    def commit(self, changes: Sequence[Change]) -> list[Outcome]:
        outcomes = []
        for change, kind in zip(changes, self.kinds, strict=True):
            message = change.load()
            outcomes.append(
                {
                    "saved": Outcome(message=message),
                    "duplicate": Outcome(conflict=True),
                    "refused": Outcome(refused=DomainError("refused by the domain")),
                    "missing": Outcome(missing=True),
                }[kind]
            )
        return outcomes


class FakeIntake:
    def __init__(self) -> None:
        self.acked: list[int] = []
        self.released: list[int] = []

    def ack(self, tags: Sequence[int]) -> None:
        self.acked += tags

    def release(self, tags: Sequence[int]) -> None:
        self.released += tags


class Dispatcher(pykka.ThreadingActor):
    def __init__(self, told: queue.Queue[Any]) -> None:
        super().__init__()
        self.told = told

    def on_receive(self, message: Any) -> None:
        self.told.put(message)


def delivery(tag: int, message_id: str | None = None) -> Delivery:
    message_id = message_id or f"m-{tag}"
    body = f'{{"message_id": "{message_id}", "channel": "sms", "to": "+447700900123", "body": "hi"}}'
    return Delivery(tag=tag, request=parse_send_request(body.encode()))


def test_only_durable_or_duplicate_requests_are_acked_the_rest_go_back_to_the_broker() -> None:
    # Given a batch whose outcomes are saved, duplicate, refused and missing
    intake, told, children = FakeIntake(), queue.Queue[Any](), Children()
    children.set("dispatcher", Dispatcher.start(told))
    actor = IntakeActor.start(
        "intake",
        None,
        store=ScriptedStore(["saved", "duplicate", "refused", "missing"]),
        intake=intake,
        children=children,
        clock=lambda: T0,
        grace=1.0,
        on_store_lost=lambda _why: None,
    )
    try:
        # When
        actor.tell(RequestsReceived(tuple(delivery(tag) for tag in (1, 2, 3, 4))))
        dispatched = told.get(timeout=5)
        # Then the saved one is dispatched, saved and duplicate acked, the others released
        assert isinstance(dispatched, DeliverMessages)
        assert [item.message.message_id for item in dispatched.items if item.message] == ["m-1"]
        assert sorted(intake.acked) == [1, 2] and sorted(intake.released) == [3, 4]
        assert actor.ask(GetCounts(), timeout=5) == {"received": 1, "duplicates": 1}
    finally:
        pykka.ActorRegistry.stop_all()
    assert isinstance(dispatched.items[0].message, Message)


def start_intake(
    store: InMemoryMessageStore, *, grace: float = 1.0
) -> tuple[Any, FakeIntake, queue.Queue[Any], list[str]]:
    """An intake actor on ``store``: the actor, its broker side, what it dispatches, why it lost the store."""
    intake, told, children, lost = FakeIntake(), queue.Queue[Any](), Children(), list[str]()
    children.set("dispatcher", Dispatcher.start(told))
    actor = IntakeActor.start(
        "intake",
        None,
        store=store,
        intake=intake,
        children=children,
        clock=lambda: T0,
        grace=grace,
        on_store_lost=lost.append,
    )
    return actor, intake, told, lost


def dispatched_ids(told: queue.Queue[Any]) -> list[str]:
    dispatched = told.get(timeout=5)
    assert isinstance(dispatched, DeliverMessages)
    return [item.message.message_id for item in dispatched.items if item.message]


def kinds(store: InMemoryMessageStore, message_id: str) -> list[str]:
    return [type(e).__name__ for e in store.history(Message.create_id(message_id))]


def test_a_request_already_in_the_store_is_acked_as_a_duplicate_and_not_dispatched_again() -> None:
    # Given m-1 received in an earlier batch
    store = InMemoryMessageStore()
    actor, intake, told, _lost = start_intake(store)
    actor.tell(RequestsReceived((delivery(1, "m-1"),)))
    assert dispatched_ids(told) == ["m-1"]
    # When a batch holds m-1 again, and a new m-2 twice
    actor.tell(RequestsReceived((delivery(2, "m-1"), delivery(3, "m-2"), delivery(4, "m-2"))))
    # Then only m-2 is dispatched, every request is acked, and each is stored once
    assert dispatched_ids(told) == ["m-2"]
    assert actor.ask(GetCounts(), timeout=5) == {"received": 2, "duplicates": 2}
    assert sorted(intake.acked) == [1, 2, 3, 4] and intake.released == []
    assert kinds(store, "m-1") == kinds(store, "m-2") == ["Received"]


def test_a_store_outage_within_the_grace_is_ridden_out_and_the_batch_stored_once_and_acked() -> None:
    # Given a store whose next write fails
    store = InMemoryMessageStore()
    store.fail_next(1)
    actor, intake, told, lost = start_intake(store)
    # When
    actor.tell(RequestsReceived((delivery(1), delivery(2))))
    # Then the intake wrote again (rebuilding each Received) and acked once it was durable
    assert dispatched_ids(told) == ["m-1", "m-2"]
    assert actor.ask(GetCounts(), timeout=5) == {"received": 2, "duplicates": 0}
    assert sorted(intake.acked) == [1, 2] and intake.released == []
    assert (store.commits, lost) == (2, [])
    assert kinds(store, "m-1") == kinds(store, "m-2") == ["Received"]


def test_a_store_outage_past_the_grace_reports_the_store_lost_and_acks_nothing() -> None:
    # Given a store whose next write fails, and no grace
    store = InMemoryMessageStore()
    store.fail_next(1)
    actor, intake, told, lost = start_intake(store, grace=0.0)
    # When
    actor.tell(RequestsReceived((delivery(1),)))
    # Then nothing is acked nor dispatched: the broker keeps the request
    assert actor.ask(GetCounts(), timeout=5) == {"received": 0, "duplicates": 0}
    assert [("injected outage" in why) for why in lost] == [True]
    assert intake.acked == [] and told.empty()
    assert kinds(store, "m-1") == []
