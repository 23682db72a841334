"""The intake actor acks only what is durable (or a known duplicate) and hands back the rest."""

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
from smeg_actors.actors.messages import DeliverMessages, RequestsReceived
from smeg_actors.actors.supervisor import Children

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)


class ScriptedStore:
    """Builds each change's aggregate, then answers with the scripted outcome kinds."""

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


def delivery(tag: int) -> Delivery:
    body = f'{{"message_id": "m-{tag}", "channel": "sms", "to": "+447700900123", "body": "hi"}}'
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
        assert actor.ask("counts", timeout=5) == {"received": 1, "duplicates": 1}
    finally:
        pykka.ActorRegistry.stop_all()
    assert isinstance(dispatched.items[0].message, Message)
