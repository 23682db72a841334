"""PublisherActor: when it looks at the log for failures to publish (nudges, ticks, failures)."""

from __future__ import annotations

from typing import Any, cast

import pytest

from smeg_actors.actors.messages import GetPublished, PublishFailed, Tick
from smeg_actors.actors.publisher import NUDGE_GAP, PublisherActor
from smeg_actors.actors.supervisor import Children
from tests.fakes import FakeClock


class FakeBroker:
    def __init__(self) -> None:
        self.keep_alives = 0

    def keep_alive(self) -> None:
        self.keep_alives += 1


class FakeOutbox:
    """Counts looks; ``backlog`` batches are published first, ``broken`` makes a look raise."""

    def __init__(self) -> None:
        self.looks = 0
        self.backlog: list[int] = []
        self.broken = False
        self.publisher = FakeBroker()
        self.parked = 0

    def keep_alive(self) -> None:
        self.publisher.keep_alive()

    def close(self) -> None:
        pass

    def publish_pending(self) -> int:
        self.looks += 1
        if self.broken:
            raise ConnectionError("broker gone")
        return self.backlog.pop(0) if self.backlog else 0


@pytest.fixture
def rig() -> tuple[PublisherActor, FakeOutbox, FakeClock]:
    outbox, clock = FakeOutbox(), FakeClock(1000.0)
    actor = PublisherActor(
        "publisher",
        None,
        outbox=outbox,
        children=Children(),
        sweep_every=1.0,
        monotonic=clock,
    )
    return actor, outbox, clock


def _nudge() -> Any:
    return PublishFailed(cast(Any, None), ())


def test_the_first_tick_looks_and_later_ticks_look_once_a_sweep(rig) -> None:
    actor, outbox, clock = rig
    actor.on_receive(Tick())
    assert outbox.looks == 1
    for _ in range(9):
        clock.now += 0.1
        actor.on_receive(Tick())
    assert outbox.looks == 1
    clock.now += 0.1
    actor.on_receive(Tick())
    assert outbox.looks == 2
    assert outbox.publisher.keep_alives == 11


def test_a_nudge_looks_at_once_when_the_last_look_is_a_tick_old(rig) -> None:
    actor, outbox, clock = rig
    actor.on_receive(Tick())
    clock.now += NUDGE_GAP
    actor.on_receive(_nudge())
    assert outbox.looks == 2


def test_nudges_within_a_tick_of_a_look_are_one_look_on_the_next_tick(rig) -> None:
    actor, outbox, clock = rig
    actor.on_receive(_nudge())
    assert outbox.looks == 1
    for _ in range(5):
        clock.now += NUDGE_GAP / 10
        actor.on_receive(_nudge())
    assert outbox.looks == 1
    clock.now += NUDGE_GAP
    actor.on_receive(Tick())
    assert outbox.looks == 2
    clock.now += NUDGE_GAP
    actor.on_receive(Tick())
    assert outbox.looks == 2


def test_a_look_publishes_batch_after_batch_until_none_is_left(rig) -> None:
    actor, outbox, _clock = rig
    outbox.backlog = [3, 2]
    actor.on_receive(_nudge())
    assert outbox.looks == 3
    assert actor.on_receive(GetPublished()) == 5


def test_a_failed_publication_waits_a_growing_pause_even_when_nudged(rig) -> None:
    actor, outbox, clock = rig
    outbox.broken = True
    actor.on_receive(_nudge())
    assert outbox.looks == 1
    clock.now += 0.4
    actor.on_receive(_nudge())
    actor.on_receive(Tick())
    assert outbox.looks == 1
    clock.now += 0.2
    actor.on_receive(Tick())
    assert outbox.looks == 2
    outbox.broken = False
    clock.now += 0.5
    actor.on_receive(Tick())
    assert outbox.looks == 2
    clock.now += 0.6
    actor.on_receive(Tick())
    assert outbox.looks == 3
