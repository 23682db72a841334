"""SchedulerActor: retries released at their due time and never earlier, recovery, adoption at start."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from uuid import UUID

import pykka
import pytest
from sqlalchemy import Engine

from adapters.event_store import Change, MessageStore
from adapters.projections import ProjectionRunner
from adapters.requested_retries import RequestedRetryIndex
from adapters.sql import make_engine
from adapters.status_view import MessageStatusProjection, UnfinishedIndex
from domain.backoff import BackoffPolicy
from domain.message import Message
from smeg_actors.actors.messages import DeliverMessages, GetPending, Recover, ScheduleRetry, Tick
from smeg_actors.actors.scheduler import SchedulerActor
from smeg_actors.actors.supervisor import Children
from tests.fakes import FakeClock

WAIT = 5.0
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)
POLICY = BackoffPolicy(initial=60, factor=3, max_delay=3600, max_attempts=5)
STALE_AFTER = 120.0
MS = timedelta(milliseconds=1)


class FakeDispatcher(pykka.ThreadingActor):
    """Records the ids of every DeliverMessages; ``"released"`` asks for them, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.released: list[UUID] = []

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, DeliverMessages):
            self.released.extend(item.id for item in message.items)
        elif message == "released":
            return list(self.released)
        return None


# --- seeding the store --------------------------------------------------------------------------


def received(at: datetime) -> Message:
    return Message.receive(
        message_id=f"m-{uuid.uuid4().hex}",
        channel="sms",
        to="+441234560123",
        body="hello",
        correlation_id=f"c-{uuid.uuid4().hex[:8]}",
        now=at,
    )


def in_flight(attempted_at: datetime) -> Message:
    message = received(attempted_at - timedelta(seconds=1))
    message.start_attempt("fake", now=attempted_at)
    return message


def backed_off(retry_at: datetime) -> Message:
    failed_at = retry_at - timedelta(seconds=POLICY.initial)
    message = in_flight(failed_at)
    message.record_transient_failure("http 503", error="TransientDeliveryError", policy=POLICY, now=failed_at)
    assert message.retry_at == retry_at
    return message


def delivered(at: datetime) -> Message:
    message = in_flight(at)
    message.record_delivery("prov-1", now=at)
    return message


@dataclass
class Env:
    store: MessageStore
    engine: Engine
    runner: ProjectionRunner
    clock: FakeClock
    dispatcher: pykka.ActorRef[Any]
    children: Children
    scheduler: pykka.ActorRef[Any] | None = None

    def seed(self, *messages: Message) -> list[UUID]:
        outcomes = self.store.commit([Change(load=lambda m=m: m, cached=m) for m in messages])
        assert all(o.saved for o in outcomes)
        return [m.id for m in messages]

    def start(self, **options: Any) -> pykka.ActorRef[Any]:
        settings: dict[str, Any] = {"stale_after": STALE_AFTER, "sweep_every": 3600.0, "orphan_margin": 30.0}
        settings.update(options)
        self.scheduler = SchedulerActor.start(
            "scheduler",
            None,
            store=self.store,
            unfinished=UnfinishedIndex(self.engine),
            catch_up=self.runner.catch_up,
            children=self.children,
            clock=self.clock,
            **settings,
        )
        self.pending()  # answered once on_start (the adoption) has run
        return self.scheduler

    def pending(self) -> int:
        assert self.scheduler is not None
        count: int = self.scheduler.ask(GetPending(), timeout=WAIT)
        return count

    def released(self) -> list[UUID]:
        ids: list[UUID] = self.dispatcher.ask("released", timeout=WAIT)
        return ids

    def tick_at(self, when: datetime) -> list[UUID]:
        """Move the clock, tick, and return every id released so far (in release order)."""
        assert self.scheduler is not None
        self.clock.now = when
        self.scheduler.tell(Tick())
        self.pending()  # the Tick is handled, so its DeliverMessages is queued at the dispatcher
        return self.released()


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    url = f"sqlite:///{tmp_path}/s.db"
    store = MessageStore(url)
    engine = make_engine(url)
    runner = ProjectionRunner(store, engine, [MessageStatusProjection()], name="message_status")
    children = Children()
    dispatcher = FakeDispatcher.start()
    children.set("dispatcher", dispatcher)
    yield Env(store, engine, runner, FakeClock(T0), dispatcher, children)
    pykka.ActorRegistry.stop_all(timeout=WAIT)
    engine.dispose()
    store.close()


# --- ScheduleRetry and Tick ---------------------------------------------------------------------


def test_scheduled_retry_is_not_released_before_its_due_time_and_is_released_at_it(env: Env) -> None:
    # Given
    scheduler = env.start()
    message_id = uuid.uuid4()
    due = T0 + timedelta(seconds=10)
    scheduler.tell(ScheduleRetry(message_id, due))
    # When / Then: one millisecond early, nothing
    assert env.tick_at(due - MS) == []
    assert env.pending() == 1
    # When / Then: at the due time, released
    assert env.tick_at(due) == [message_id]
    assert env.pending() == 0


def test_retries_are_released_in_due_order_and_only_the_due_ones(env: Env) -> None:
    # Given
    scheduler = env.start()
    late, early, never = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    scheduler.tell(ScheduleRetry(late, T0 + timedelta(seconds=20)))
    scheduler.tell(ScheduleRetry(early, T0 + timedelta(seconds=10)))
    scheduler.tell(ScheduleRetry(never, T0 + timedelta(hours=1)))
    # When
    released = env.tick_at(T0 + timedelta(seconds=30))
    # Then
    assert released == [early, late]
    assert env.pending() == 1


@pytest.mark.parametrize("earlier_first", [True, False], ids=["earlier-first", "earlier-second"])
def test_earlier_retry_for_the_same_id_wins_and_the_id_is_released_once(
    env: Env, earlier_first: bool
) -> None:
    # Given two retries for one message
    scheduler = env.start()
    message_id = uuid.uuid4()
    early, late = T0 + timedelta(seconds=10), T0 + timedelta(seconds=20)
    for due in (early, late) if earlier_first else (late, early):
        scheduler.tell(ScheduleRetry(message_id, due))
    assert env.pending() == 1
    # When / Then: released at the earlier time
    assert env.tick_at(early - MS) == []
    assert env.tick_at(early) == [message_id]
    # And not again at the later one
    assert env.tick_at(late) == [message_id]
    assert env.pending() == 0


def test_id_scheduled_again_after_its_release_is_released_again(env: Env) -> None:
    """A message that backs off a second time gets a second release (the stale heap entry is no veto)."""
    # Given a message released once, with a second, later ScheduleRetry pending from before
    scheduler = env.start()
    message_id = uuid.uuid4()
    scheduler.tell(ScheduleRetry(message_id, T0 + timedelta(seconds=20)))
    scheduler.tell(ScheduleRetry(message_id, T0 + timedelta(seconds=10)))
    assert env.tick_at(T0 + timedelta(seconds=10)) == [message_id]
    # When it backs off again
    scheduler.tell(ScheduleRetry(message_id, T0 + timedelta(seconds=40)))
    # Then
    assert env.tick_at(T0 + timedelta(seconds=39)) == [message_id]
    assert env.tick_at(T0 + timedelta(seconds=40)) == [message_id, message_id]


# --- Recover ------------------------------------------------------------------------------------


def test_recovered_backed_off_message_is_scheduled_at_its_retry_at(env: Env) -> None:
    # Given a scheduler started on an empty store, then a backed-off message
    scheduler = env.start()
    assert env.pending() == 0
    retry_at = T0 + timedelta(seconds=60)
    [message_id] = env.seed(backed_off(retry_at))
    # When
    scheduler.tell(Recover((message_id,)))
    # Then
    assert env.pending() == 1
    assert env.tick_at(retry_at - MS) == []
    assert env.tick_at(retry_at) == [message_id]


def test_recovered_in_flight_message_is_scheduled_when_its_attempt_turns_stale(env: Env) -> None:
    # Given
    scheduler = env.start()
    attempted_at = T0 - timedelta(seconds=20)
    [message_id] = env.seed(in_flight(attempted_at))
    stale_at = attempted_at + timedelta(seconds=STALE_AFTER)
    # When
    scheduler.tell(Recover((message_id,)))
    # Then
    assert env.pending() == 1
    assert env.tick_at(stale_at - MS) == []
    assert env.tick_at(stale_at) == [message_id]


def test_recovered_delivered_message_is_not_scheduled(env: Env) -> None:
    # Given
    scheduler = env.start()
    [message_id] = env.seed(delivered(T0 - timedelta(seconds=5)))
    # When
    scheduler.tell(Recover((message_id,)))
    # Then
    assert env.pending() == 0
    assert env.tick_at(T0 + timedelta(days=1)) == []


def test_recovery_of_an_unknown_message_is_looked_at_again_five_seconds_later(env: Env) -> None:
    # Given
    scheduler = env.start()
    missing = uuid.uuid4()
    # When
    scheduler.tell(Recover((missing,)))
    # Then
    assert env.pending() == 1
    assert env.tick_at(T0 + timedelta(seconds=5) - MS) == []
    assert env.tick_at(T0 + timedelta(seconds=5)) == [missing]


# --- adoption from the read model ---------------------------------------------------------------


def test_on_start_adopts_unfinished_messages_and_releases_the_overdue_ones_on_first_tick(env: Env) -> None:
    # Given a store with messages in every status, some overdue and some not
    fresh = received(T0 - timedelta(seconds=60))
    backing_off = backed_off(retry_at=T0 + timedelta(seconds=30))
    interrupted = in_flight(attempted_at=T0 - timedelta(minutes=10))
    attempting = in_flight(attempted_at=T0 - timedelta(seconds=60))  # turns stale at T0 + 60 s
    done = delivered(T0 - timedelta(minutes=5))
    env.seed(fresh, backing_off, interrupted, attempting, done)
    # When
    env.start()
    # Then only the unfinished ones are adopted
    assert env.pending() == 4
    # And the overdue ones go out on the first tick
    first = env.tick_at(T0)
    assert sorted(first) == sorted([fresh.id, interrupted.id])
    assert env.pending() == 2
    # And the others each at its own due time: the backed-off at retry_at, the in-flight when stale
    assert env.tick_at(T0 + timedelta(seconds=30) - MS) == first
    assert env.tick_at(T0 + timedelta(seconds=30)) == [*first, backing_off.id]
    assert env.tick_at(T0 + timedelta(seconds=60) - MS) == [*first, backing_off.id]
    assert env.tick_at(T0 + timedelta(seconds=60)) == [*first, backing_off.id, attempting.id]
    assert env.pending() == 0


def test_start_survives_a_read_model_that_cannot_catch_up(env: Env) -> None:
    # Given
    def broken_catch_up() -> int:
        raise RuntimeError("read model unavailable")

    env.seed(received(T0 - timedelta(seconds=60)))
    env.runner.catch_up = broken_catch_up  # type: ignore[method-assign]
    # When
    scheduler = env.start()
    # Then
    assert scheduler.is_alive()
    assert env.pending() == 0


def test_orphan_sweep_adopts_only_messages_overdue_by_more_than_the_margin(env: Env) -> None:
    # Given a running scheduler, then messages another (dead) process left behind
    env.start(sweep_every=5.0, orphan_margin=30.0)
    assert env.pending() == 0
    sweep_at = T0 + timedelta(seconds=5)
    orphans = env.seed(
        received(sweep_at - timedelta(seconds=45)),
        backed_off(retry_at=sweep_at - timedelta(seconds=50)),
        in_flight(attempted_at=sweep_at - timedelta(seconds=STALE_AFTER + 31)),
    )
    env.seed(
        received(sweep_at - timedelta(seconds=15)),
        backed_off(retry_at=sweep_at - timedelta(seconds=25)),
        in_flight(attempted_at=sweep_at - timedelta(seconds=STALE_AFTER + 10)),
        delivered(sweep_at - timedelta(minutes=10)),
    )
    env.runner.catch_up()  # the projector keeps message_status current
    # When a tick comes before the sweep is due
    assert env.tick_at(sweep_at - MS) == []
    assert env.pending() == 0
    # And when one comes at the sweep time
    env.tick_at(sweep_at)
    # Then only the orphans overdue by more than 30 s are adopted, and released on the next tick
    assert env.pending() == 3
    assert sorted(env.tick_at(sweep_at + MS)) == sorted(orphans)


# --- retries people ask for ---------------------------------------------------------------------


def failed(at: datetime) -> Message:
    message = in_flight(at)
    message.record_permanent_failure("http 400", error="PermanentDeliveryError", now=at, status_code=400)
    return message


def test_a_retry_a_person_asks_for_goes_out_within_a_second_not_at_the_next_sweep(env: Env) -> None:
    # Given a scheduler whose orphan sweep is an hour away, and a message that failed 2 s ago
    env.start(sweep_every=3600.0, orphan_margin=30.0, requested=RequestedRetryIndex(env.engine))
    env.tick_at(T0)  # the first look at requested retries: none yet
    message = failed(T0 - timedelta(seconds=2))
    env.seed(message)
    env.seed(received(T0))  # a fresh message of another process: not the scheduler's to take
    # When a person asks for its retry (recorded elsewhere: only the read model says so)
    message.request_retry("cli:ops", now=T0 + timedelta(milliseconds=200), reason="fixed")
    env.seed(message)
    env.runner.catch_up()
    # Then the next look, a second after the last, finds it and the tick after releases it
    assert env.tick_at(T0 + timedelta(milliseconds=900)) == []
    env.tick_at(T0 + timedelta(seconds=1))
    assert env.tick_at(T0 + timedelta(seconds=1, milliseconds=100)) == [message.id]


def test_each_requested_retry_is_read_once_and_the_next_ones_on_later_looks(env: Env) -> None:
    # Given two retries asked for one after the other
    env.start(sweep_every=3600.0, requested=RequestedRetryIndex(env.engine, page_size=1))
    first, second = failed(T0 - timedelta(seconds=5)), failed(T0 - timedelta(seconds=5))
    first.request_retry("cli:ops", now=T0 - timedelta(seconds=2))
    second.request_retry("cli:ops", now=T0 - timedelta(seconds=1))
    env.seed(first, second)
    env.runner.catch_up()
    # When looks are made a page (one row) at a time
    env.tick_at(T0)
    assert env.tick_at(T0 + MS) == [first.id]
    # Then a look that found something looks again at the next tick, and finds the next one only
    assert env.tick_at(T0 + 2 * MS) == [first.id, second.id]
    # And once nothing new is found, what was released is not released again
    assert env.tick_at(T0 + timedelta(seconds=5)) == [first.id, second.id]
