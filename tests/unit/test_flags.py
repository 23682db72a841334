"""Flags and kill switches: the ``Flags`` aggregate (values, expiry, validation), the per-process
view and what obeys it (routing, scheduler, dispatcher, workers), and the flags actor."""

from __future__ import annotations

import queue
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from functools import reduce
from typing import Any
from uuid import uuid4

import pykka
import pytest

from domain.canary import CanaryLog
from domain.flags import (
    CANARY_ENABLED,
    DELIVERY_PAUSED,
    GLOBAL,
    KNOWN,
    REDRIVE_AUTO,
    Flags,
    UnknownFlagError,
    parse_duration,
    paused_flag,
    spec_of,
    values_at,
)
from domain.message import HELD
from domain.ports import Hold
from domain.routing import Route, RoutingPolicy
from smeg_actors.actors import flags as flags_module
from smeg_actors.actors.dispatcher import DispatcherActor
from smeg_actors.actors.flags import (
    PAUSE_RECHECK,
    AutoRedriveOff,
    FlagsActor,
    FlagsView,
    PausingRouting,
    when_redrive_auto,
)
from smeg_actors.actors.messages import (
    DeliverBatch,
    DeliverMessages,
    GetPending,
    ProviderRecovered,
    ScheduleRetry,
    Tick,
    WorkItem,
)
from smeg_actors.actors.redrive import RedriverActor
from smeg_actors.actors.scheduler import SchedulerActor
from smeg_actors.actors.supervisor import Children
from smeg_actors.actors.worker import WorkerActor
from smeg_actors.cli.flags import FLAG_NAMES
from tests.fakes import FakeClock, FakeProvider, InMemoryMessageStore
from tests.logcapture import captured_logs, json_lines
from tests.unit.test_worker import POLICY, STALE_AFTER, Recorder, Rig, received

WAIT = 5.0
T0 = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


def replayed(flags: Flags) -> Flags:
    """The aggregate rebuilt from its events, as the store would load it."""
    rebuilt: Any = reduce(lambda aggregate, event: event.mutate(aggregate), flags.collect_events(), None)
    return rebuilt


def paused(flags: Flags, name: str = DELIVERY_PAUSED, **options: Any) -> Flags:
    flags.set(name, True, by="cli:alice", reason="incident 42", now=options.pop("now", T0), **options)
    return flags


class FakeFlags:
    """The ``FlagRepository`` port in memory; ``broken`` makes reads fail (the store away)."""

    def __init__(self) -> None:
        self.events: list[Any] = []
        self.broken = False

    def get(self) -> Flags | None:
        if self.broken:
            raise RuntimeError("store unavailable")
        flags: Flags | None = reduce(lambda aggregate, event: event.mutate(aggregate), self.events, None)
        return flags

    def change(self, apply: Any, *, now: datetime) -> Flags:
        flags = self.get() or Flags.start(now=now)
        apply(flags)
        self.events += flags.collect_events()
        return flags

    def set(self, name: str, value: bool, now: datetime = T0, **options: Any) -> None:
        self.change(
            lambda flags: flags.set(name, value, by="cli:alice", reason="incident 42", now=now, **options),
            now=now,
        )


# --- the aggregate ------------------------------------------------------------------------------


def test_every_flag_holds_its_default_until_set() -> None:
    flags = Flags.start(now=T0)
    assert values_at(flags, T0) == values_at(None, T0) == {name: spec.default for name, spec in KNOWN.items()}
    assert values_at(None, T0) == {
        "delivery.paused": False,
        "delivery.paused.sms": False,
        "delivery.paused.im": False,
        "redrive.auto": True,
        "canary.enabled": True,
    }
    assert flags.id == Flags.create_id() == Flags.start(now=T0 + timedelta(days=1)).id  # one per deployment


def test_a_flag_set_is_recorded_with_who_why_scope_and_expiry_and_replays() -> None:
    # Given
    flags = Flags.start(now=T0)
    until = T0 + timedelta(minutes=30)
    # When
    flags.set(paused_flag("sms"), True, by="cli:alice", reason="carrier outage", now=T0, expires_at=until)
    flags.set(REDRIVE_AUTO, False, by="cli:bob", reason="poison batch", now=T0)
    # Then
    events = flags.collect_events()
    assert [type(e).__name__ for e in events] == ["Started", "FlagSet", "FlagSet"]
    first = events[1]
    assert (first.name, first.value, first.scope, first.by, first.reason, first.expires_at) == (
        "delivery.paused.sms",
        True,
        "sms",
        "cli:alice",
        "carrier outage",
        until,
    )
    assert events[2].scope == GLOBAL and events[2].expires_at is None
    rebuilt: Any = reduce(lambda aggregate, event: event.mutate(aggregate), events, None)
    assert rebuilt.value_at("delivery.paused.sms", T0) is True
    assert rebuilt.value_at(REDRIVE_AUTO, T0) is False
    assert rebuilt.current(REDRIVE_AUTO, T0).by == "cli:bob"


def test_the_latest_setting_wins() -> None:
    flags = paused(Flags.start(now=T0))
    flags.set(DELIVERY_PAUSED, False, by="cli:bob", reason="resolved", now=T0 + timedelta(minutes=5))
    assert flags.value_at(DELIVERY_PAUSED, T0 + timedelta(minutes=5)) is False
    entry = flags.current(DELIVERY_PAUSED, T0 + timedelta(minutes=5))
    assert entry is not None and (entry.by, entry.reason) == ("cli:bob", "resolved")


def test_a_setting_with_an_expiry_returns_to_the_default_once_it_passed() -> None:
    until = T0 + timedelta(minutes=30)
    flags = paused(Flags.start(now=T0), expires_at=until)
    assert flags.value_at(DELIVERY_PAUSED, until - timedelta(microseconds=1)) is True
    assert flags.value_at(DELIVERY_PAUSED, until) is False
    assert flags.current(DELIVERY_PAUSED, until) is None
    flags.set(CANARY_ENABLED, False, by="cli:a", reason="noisy", now=T0, expires_at=until)
    assert flags.value_at(CANARY_ENABLED, until + timedelta(days=1)) is True  # back to its default


@pytest.mark.parametrize(
    ("name", "value", "options", "error"),
    [
        ("delivery.pause", True, {}, "unknown flag: 'delivery.pause'"),
        ("delivery.paused.fax", True, {}, "unknown flag: 'delivery.paused.fax'"),
        (DELIVERY_PAUSED, "true", {}, "delivery.paused: expected true or false, not 'true'"),
        (DELIVERY_PAUSED, 1, {}, "delivery.paused: expected true or false"),
        (DELIVERY_PAUSED, True, {"by": " "}, "delivery.paused: who sets it and why must be given"),
        (DELIVERY_PAUSED, True, {"reason": ""}, "delivery.paused: who sets it and why must be given"),
        (
            DELIVERY_PAUSED,
            True,
            {"expires_at": T0},
            "delivery.paused: expires_at 2026-12-07T12:00:00+00:00 is not",
        ),
        (REDRIVE_AUTO, True, {"expires_at": T0 + timedelta(hours=1)}, "redrive.auto: true is its default"),
    ],
)
def test_a_setting_the_rules_refuse_raises_a_value_error_naming_the_flag(
    name: str, value: Any, options: dict[str, Any], error: str
) -> None:
    flags = Flags.start(now=T0)
    settings = {"by": "cli:alice", "reason": "why", **options}
    with pytest.raises(ValueError, match="^" + error.replace("(", r"\(").replace("+", r"\+")):
        flags.set(name, value, now=T0, **settings)
    assert len(flags.collect_events()) == 1  # nothing but Started


def test_an_unknown_flag_is_named_with_the_known_ones() -> None:
    with pytest.raises(UnknownFlagError) as caught:
        spec_of("delivery.pasued")
    assert isinstance(caught.value, ValueError)
    assert str(caught.value) == (
        "unknown flag: 'delivery.pasued' (known: delivery.paused, delivery.paused.sms, delivery.paused.im,"
        " redrive.auto, canary.enabled)"
    )
    with pytest.raises(UnknownFlagError):
        Flags.start(now=T0).value_at("nope", T0)


@pytest.mark.parametrize(
    ("text", "value"),
    [("true", True), ("ON", True), ("yes", True), ("1", True), ("false", False), (" off ", False)],
)
def test_a_value_is_spelt_as_an_operator_would(text: str, value: bool) -> None:
    assert spec_of(DELIVERY_PAUSED).parse(text) is value


def test_a_value_that_is_no_bool_is_refused_naming_the_flag() -> None:
    with pytest.raises(ValueError, match=r"^redrive\.auto: expected true or false, not 'maybe'$"):
        spec_of(REDRIVE_AUTO).parse("maybe")


@pytest.mark.parametrize(
    ("text", "seconds"), [("30s", 30), ("30m", 1800), ("2h", 7200), ("1d", 86400), ("366d", 366 * 86400)]
)
def test_durations_take_seconds_minutes_hours_and_days(text: str, seconds: int) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["30", "1w", "0m", "-1m", "1.5h", "m", "", "367d", "30 m"])
def test_other_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_the_cli_help_names_every_known_flag() -> None:
    assert tuple(KNOWN) == FLAG_NAMES


# --- the view and the routing -------------------------------------------------------------------


def test_the_view_holds_the_defaults_until_read_then_the_store_s_values() -> None:
    # Given
    view, repository = FlagsView(), FakeFlags()
    assert view.delivery_paused() is False and view.redrive_auto() is True and view.canary_enabled() is True
    assert view.refresh(repository, T0) == {}
    # When
    repository.set(paused_flag("im"), True)
    repository.set(REDRIVE_AUTO, False)
    # Then
    assert view.refresh(repository, T0) == {"delivery.paused.im": True, "redrive.auto": False}
    assert view.paused_scope("im") == "im" and view.paused_scope("sms") is None
    assert view.pause_reason() == "delivery paused for channel im"
    assert view.redrive_auto() is False
    assert view.refresh(repository, T0 + timedelta(seconds=1)) == {}


def test_the_view_sees_a_setting_run_out() -> None:
    view, repository = FlagsView(), FakeFlags()
    repository.set(DELIVERY_PAUSED, True, expires_at=T0 + timedelta(seconds=30))
    assert view.refresh(repository, T0) == {DELIVERY_PAUSED: True}
    assert view.paused_scope("sms") == GLOBAL == view.paused_scope("im")
    assert view.pause_reason() == "delivery paused"
    assert view.refresh(repository, T0 + timedelta(seconds=30)) == {DELIVERY_PAUSED: False}
    assert view.paused_scope("sms") is None and view.pause_reason() is None


def routing(view: FlagsView, clock: Any = lambda: T0) -> PausingRouting:
    policy = RoutingPolicy(
        "a",
        frozenset({"a", "b"}),
        fallbacks={"a": ("b",)},
        routes={"im": Route((("b", 1),))},
        failover_after=3,
    )
    return PausingRouting.over(policy, view, clock)


def test_the_pausing_routing_keeps_every_setting_and_chooses_as_before_while_nothing_is_paused() -> None:
    view = FlagsView()
    policy = routing(view)
    assert (policy.default_provider, policy.failover_after, dict(policy.fallbacks)) == ("a", 3, {"a": ("b",)})
    asked: list[str] = []
    choice = policy.choose(
        pinned=None, channel="im", key=uuid4(), failures={}, admit=lambda p: asked.append(p)
    )
    assert (choice.provider, choice.admission, asked) == ("b", None, ["b"])
    assert view.parked == {}


def test_a_message_of_a_paused_channel_is_held_for_its_first_candidate_without_asking_the_gate() -> None:
    # Given sms paused
    view, repository = FlagsView(), FakeFlags()
    repository.set(paused_flag("sms"), True)
    view.refresh(repository, T0)
    policy, key = routing(view), uuid4()
    # When
    choice = policy.choose(pinned=None, channel="sms", key=key, failures={}, admit=lambda p: pytest.fail(p))
    # Then
    assert choice.provider == "a"
    assert choice.admission == Hold(T0 + PAUSE_RECHECK, "delivery paused for channel sms")
    assert view.unpark("sms") == {key}
    # and im goes on
    assert (
        policy.choose(pinned=None, channel="im", key=key, failures={}, admit=lambda p: None).admission is None
    )


def test_while_delivery_is_paused_every_channel_is_held_for_the_pause() -> None:
    view, repository = FlagsView(), FakeFlags()
    repository.set(DELIVERY_PAUSED, True)
    view.refresh(repository, T0)
    choice = routing(view).choose(pinned="b", channel="im", key=uuid4(), failures={}, admit=lambda p: None)
    assert choice == type(choice)("b", Hold(T0 + PAUSE_RECHECK, "delivery paused"))
    assert set(view.parked) == {GLOBAL}


def test_a_worker_holds_a_paused_channel_s_message_once_and_calls_no_provider() -> None:
    # Given sms paused, and a worker over the pausing routing
    rig = Rig(InMemoryMessageStore(), FakeProvider())
    view, repository = FlagsView(), FakeFlags()
    repository.set(paused_flag("sms"), True)
    view.refresh(repository, T0)
    [sms, im] = rig.seed(received(), received(channel="im", to="alice@example.org"))
    worker = WorkerActor.start(
        "worker-0",
        None,
        store=rig.store,
        providers={"fake": rig.provider},
        default_provider="fake",
        policy=POLICY,
        calls=rig.calls,
        routing=PausingRouting.over(RoutingPolicy("fake", frozenset({"fake"})), view, rig.clock),
        children=rig.children,
        clock=rig.clock,
        stale_after=STALE_AFTER,
        call_timeout=5.0,
        grace=1.0,
        on_store_lost=rig.store_lost.append,
    )
    try:
        # When
        rig.deliver(worker, WorkItem(sms), WorkItem(im))
        rig.deliver(worker, WorkItem(sms))  # looked at again while still paused
        # Then the sms waits, held once; the im went out
        assert rig.history(sms) == ["Received", "Held"]
        held = rig.store.history(sms)[1]
        assert (held.reason, held.provider, held.until) == (
            "delivery paused for channel sms",
            "fake",
            rig.clock.now + PAUSE_RECHECK,
        )
        assert rig.store.get(sms).status == HELD
        assert rig.history(im) == ["Received", "Attempted", "Delivered"]
        assert sum(rig.provider.calls.values()) == 1
        told = [m for m in rig.told("scheduler") if isinstance(m, ScheduleRetry)]
        assert [(m.id, m.due) for m in told] == [(sms, rig.clock.now + PAUSE_RECHECK)] * 2
    finally:
        rig.calls.stop()


# --- the flags actor ----------------------------------------------------------------------------


@pytest.fixture
def scheduler_inbox() -> Iterator[tuple[Children, queue.Queue[Any]]]:
    children, arrived = Children(), queue.Queue[Any]()
    children.set("scheduler", Recorder.start(arrived))
    yield children, arrived


def test_the_actor_reads_on_start_and_every_second_of_ticks_and_says_who_paused_delivery(
    scheduler_inbox: tuple[Children, queue.Queue[Any]],
) -> None:
    children, _ = scheduler_inbox
    view, repository, clock, monotonic = FlagsView(), FakeFlags(), FakeClock(T0), FakeClock(100.0)
    repository.set(paused_flag("im"), True)
    with captured_logs("info", flags_module) as stream:
        # Given an actor started: it has read the flags already
        actor = FlagsActor.start(
            "flags",
            None,
            view=view,
            repository=repository,
            children=children,
            clock=clock,
            monotonic=monotonic,
        )
        actor.ask(Tick(), timeout=WAIT)  # (within the second: no second read)
        assert view.paused_scope("im") == "im"
        # When delivery is paused: not read before a second passed
        repository.set(DELIVERY_PAUSED, True, expires_at=T0 + timedelta(minutes=30))
        actor.ask(Tick(), timeout=WAIT)
        assert view.delivery_paused() is False
        monotonic.now += 1.0
        actor.ask(Tick(), timeout=WAIT)
        assert view.delivery_paused() is True
        # and when the setting runs out
        clock.now, monotonic.now = T0 + timedelta(minutes=30), 102.0
        actor.ask(Tick(), timeout=WAIT)
        assert view.delivery_paused() is False
    lines = [line for line in json_lines(stream) if line["event"].startswith("delivery_")]
    assert [(line["event"], line["level"], line["flag"]) for line in lines] == [
        ("delivery_paused", "warning", "delivery.paused.im"),
        ("delivery_paused", "warning", "delivery.paused"),
        ("delivery_resumed", "warning", "delivery.paused"),
    ]
    assert (lines[1]["by"], lines[1]["reason"], lines[1]["scope"]) == ("cli:alice", "incident 42", "global")
    assert lines[1]["expires_at"] == "2026-12-07T12:30:00+00:00"
    assert lines[2]["expired"] is True and lines[2]["by"] == "cli:alice"


def test_on_resume_the_messages_this_process_held_go_back_to_the_scheduler_due_now(
    scheduler_inbox: tuple[Children, queue.Queue[Any]],
) -> None:
    children, arrived = scheduler_inbox
    view, repository, clock, monotonic = FlagsView(), FakeFlags(), FakeClock(T0), FakeClock(100.0)
    repository.set(paused_flag("sms"), True)
    actor = FlagsActor.start(
        "flags", None, view=view, repository=repository, children=children, clock=clock, monotonic=monotonic
    )
    actor.ask(Tick(), timeout=WAIT)
    held = [uuid4(), uuid4()]
    for message in held:
        view.park("sms", message)
    view.park(GLOBAL, uuid4())  # held for another pause: stays
    # When the channel resumes
    repository.set(paused_flag("sms"), False, now=T0 + timedelta(minutes=1))
    clock.now, monotonic.now = T0 + timedelta(minutes=1), 101.0
    actor.ask(Tick(), timeout=WAIT)
    # Then
    released = {arrived.get(timeout=WAIT) for _ in held}
    assert released == {ScheduleRetry(m, T0 + timedelta(minutes=1)) for m in held}
    assert set(view.parked) == {GLOBAL}


def test_an_unreadable_store_keeps_the_last_flags_and_is_said_once(
    scheduler_inbox: tuple[Children, queue.Queue[Any]],
) -> None:
    children, _ = scheduler_inbox
    view, repository, monotonic = FlagsView(), FakeFlags(), FakeClock(100.0)
    repository.set(DELIVERY_PAUSED, True)
    with captured_logs("info", flags_module) as stream:
        actor = FlagsActor.start(
            "flags",
            None,
            view=view,
            repository=repository,
            children=children,
            clock=FakeClock(T0),
            monotonic=monotonic,
        )
        actor.ask(Tick(), timeout=WAIT)
        repository.broken = True
        for _ in range(3):
            monotonic.now += 1.0
            actor.ask(Tick(), timeout=WAIT)
    assert view.delivery_paused() is True
    assert [line["event"] for line in json_lines(stream)].count("flags_unreadable") == 1


# --- what obeys the pause: scheduler, dispatcher ------------------------------------------------


def test_while_delivery_is_paused_the_scheduler_releases_nothing_and_afterwards_everything_due() -> None:
    # Given a scheduler with a due retry, paused
    children, arrived, pause = Children(), queue.Queue[Any](), [True]
    children.set("dispatcher", Recorder.start(arrived))
    clock = FakeClock(T0)
    scheduler = SchedulerActor.start(
        "scheduler",
        None,
        store=InMemoryMessageStore(),
        unfinished=lambda **_: iter(()),
        catch_up=lambda: 0,
        children=children,
        clock=clock,
        stale_after=STALE_AFTER,
        sweep_every=3600.0,
        paused=lambda: pause[0],
    )
    message = uuid4()
    scheduler.tell(ScheduleRetry(message, T0 - timedelta(seconds=1)))
    # When it ticks while paused
    for _ in range(3):
        clock.now += timedelta(minutes=1)
        scheduler.ask(Tick(), timeout=WAIT)
    # Then the retry is still pending, released by the first tick after the pause
    assert scheduler.ask(GetPending(), timeout=WAIT) == 1 and arrived.empty()
    pause[0] = False
    scheduler.ask(Tick(), timeout=WAIT)
    assert arrived.get(timeout=WAIT) == DeliverMessages((WorkItem(message),))
    assert scheduler.ask(GetPending(), timeout=WAIT) == 0


def test_while_delivery_is_paused_the_dispatcher_hands_out_nothing_and_a_tick_after_it_does() -> None:
    children, arrived, pause = Children(), queue.Queue[Any](), [True]
    children.set("worker-0", Recorder.start(arrived))
    dispatcher = DispatcherActor.start(
        "dispatcher", None, workers=["worker-0"], children=children, paused=lambda: pause[0]
    )
    items = (WorkItem(uuid4()),)
    dispatcher.ask(DeliverMessages(items), timeout=WAIT)
    dispatcher.ask(Tick(), timeout=WAIT)
    assert arrived.empty()
    pause[0] = False
    dispatcher.ask(Tick(), timeout=WAIT)
    assert arrived.get(timeout=WAIT) == DeliverBatch(items)


# --- redrive.auto -------------------------------------------------------------------------------


def test_with_redrive_auto_off_the_automatic_redriver_opens_no_queue_and_redrives_nothing() -> None:
    # Given the automatic redriver, and redrive.auto false
    view, repository, opened = FlagsView(), FakeFlags(), queue.Queue[str]()
    repository.set(REDRIVE_AUTO, False)
    view.refresh(repository, T0)

    def open_reader() -> Any:
        opened.put("opened")
        raise RuntimeError("no broker in this test")

    redriver = RedriverActor.start(
        "redriver",
        None,
        store=InMemoryMessageStore(),
        open_reader=when_redrive_auto(view, open_reader),
        children=Children(),
        clock=FakeClock(T0),
        rate=20.0,
        cooldown=0.0,
    )
    # When a provider recovers
    redriver.ask(ProviderRecovered("fake"), timeout=WAIT)
    _redrive_done(redriver)
    # Then nothing was opened
    assert opened.empty()
    # and once it is on again, the next recovery does open the failed queue
    repository.set(REDRIVE_AUTO, True)
    view.refresh(repository, T0)
    redriver.ask(ProviderRecovered("fake"), timeout=WAIT)
    assert opened.get(timeout=WAIT) == "opened"
    with pytest.raises(AutoRedriveOff, match=r"redrive\.auto is false"):
        repository.set(REDRIVE_AUTO, False)
        view.refresh(repository, T0)
        when_redrive_auto(view, open_reader)()


def _redrive_done(redriver: pykka.ActorRef[Any]) -> None:
    thread = redriver.proxy().thread.get(timeout=WAIT)
    assert thread is not None
    thread.join(WAIT)
    assert not thread.is_alive()


# --- canary.enabled (with the canary's `enabled` callable) --------------------------------------


def test_with_canary_enabled_off_no_canary_is_sent_and_on_again_one_is_at_once() -> None:
    # Given the canary actor over the view, canary.enabled false
    from smeg_actors.actors.canary import CanaryActor

    view, repository, sent = FlagsView(), FakeFlags(), []
    repository.set(CANARY_ENABLED, False)
    view.refresh(repository, T0)
    clock, tick = FakeClock(T0), FakeClock(0.0)
    actor = CanaryActor(
        "canary",
        None,
        canaries=CanaryLog(slo=10),
        request=lambda message_id: message_id,
        send=sent.append,
        find=lambda _: None,
        node="n/1",
        interval=30,
        clock=clock,
        monotonic=tick,
        enabled=view.canary_enabled,
    )
    # When it ticks for two minutes
    for _ in range(120):
        tick.sleep(1)
        actor.on_receive(Tick())
    # Then nothing was sent, and the first tick after it is on again sends one
    assert sent == []
    repository.set(CANARY_ENABLED, True)
    view.refresh(repository, T0)
    tick.sleep(1)
    actor.on_receive(Tick())
    assert len(sent) == 1
