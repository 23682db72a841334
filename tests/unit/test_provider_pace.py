"""The gate paces each provider: its rate-limit share, a ramp after it comes back, 429s."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from domain.backoff import BackoffPolicy
from domain.circuit import CircuitPolicy
from domain.errors import RetryNotDueError
from domain.message import Message
from domain.ports import Hold, Trial
from domain.routing import RoutingPolicy
from smeg_actors.actors.provider_health import PACED, ProviderHealthView
from tests.fakes import FakeClock, InMemoryProviderHealth

T0 = datetime(2026, 12, 7, 12, 0, tzinfo=timezone.utc)
POLICY = CircuitPolicy(window=30, activation_threshold=4, open_for=10, half_open_attempts=1)


def paced_view(limit: float | None, clock: FakeClock, store: InMemoryProviderHealth | None = None):  # type: ignore[no-untyped-def]
    store = store or InMemoryProviderHealth()
    view = ProviderHealthView(
        ["a", "b"], repository=store, policies={"a": POLICY}, limits={"a": limit}, monotonic=clock
    )
    view.refresh(store)
    return view, store


def test_a_rate_limit_admits_its_rate_and_holds_the_rest_in_order_with_one_reason() -> None:
    clock = FakeClock(100.0)
    view, _ = paced_view(10.0, clock)
    answers = [view.admit("a", T0, key) for key in range(5)]
    assert answers[0] is None
    holds = [a for a in answers[1:] if isinstance(a, Hold)]
    assert len(holds) == 4 and all(h.paced and h.reason == PACED for h in holds)
    assert [h.until for h in holds] == sorted(h.until for h in holds)
    assert holds[-1].until == T0 + timedelta(seconds=0.4)
    assert view.admit("b", T0, "x") is None  # another provider has no limit


def test_the_share_divides_the_limit_between_live_processes() -> None:
    clock = FakeClock(100.0)
    view, _ = paced_view(10.0, clock)
    view.share(2)
    view.admit("a", T0, 1)
    hold = view.admit("a", T0, 2)
    assert isinstance(hold, Hold) and hold.until == T0 + timedelta(seconds=0.2)


def test_a_provider_enabled_again_is_ramped_up_from_a_tenth() -> None:
    clock = FakeClock(100.0)
    store = InMemoryProviderHealth()
    store.change("a", lambda h: h.disable(by="ops", reason="x", now=T0), now=T0)
    view, _ = paced_view(None, clock, store)
    store.change("a", lambda h: h.enable(by="ops", now=T0), now=T0)
    view.refresh(store)
    assert view.admit("a", T0, 1) is None
    hold = view.admit("a", T0, 2)  # 10 % of the 100/s ramp rate: one every 0.1 s
    assert isinstance(hold, Hold) and hold.until == T0 + timedelta(seconds=0.1)
    clock.now = 141.0  # the ramp is over: no limit
    assert all(view.admit("a", T0, k) is None for k in range(100, 200))


def test_a_429_slows_the_pace_does_not_count_toward_the_circuit_and_honours_retry_after() -> None:
    clock = FakeClock(100.0)
    view, store = paced_view(None, clock)
    for _ in range(10):
        view.record("a", transient=True, trial=False, now=T0, status_code=429, retry_after=2.0)
    assert store.get("a") is None  # no circuit opened by a 429 storm
    hold = view.admit("a", T0, "m")
    assert isinstance(hold, Hold) and hold.paced and hold.until == T0 + timedelta(seconds=2)


def test_a_paced_hold_does_not_move_a_message_to_its_fallback() -> None:
    clock = FakeClock(100.0)
    view, _ = paced_view(1.0, clock)
    routing = RoutingPolicy("a", frozenset({"a", "b"}), fallbacks={"a": ("b",)})
    key = Message.create_id("m")
    view.admit("a", T0, "someone-else")
    choice = routing.choose(
        pinned=None, channel="sms", key=key, failures={}, admit=lambda p: view.admit(p, T0, key)
    )
    assert choice.provider == "a" and isinstance(choice.admission, Hold)


def test_429s_are_free_up_to_the_cycle_s_attempts_then_count_so_none_waits_forever() -> None:
    policy = BackoffPolicy(initial=1, max_attempts=3)
    message = Message.receive(
        message_id="m", channel="sms", to="+15550000000", body="x", correlation_id="c", now=T0
    )
    now, outcomes = T0, []
    for _ in range(6):
        message.start_attempt("a", now=now)
        message.record_transient_failure(
            "http 429", error="T", policy=policy, now=now, status_code=429, retry_after=7
        )
        outcomes.append((message.status, message.cycle_attempts, message.failures.get("a", 0)))
        now = message.retry_at or now
    assert outcomes == [
        ("backed_off", 0, 0),
        ("backed_off", 0, 0),
        ("backed_off", 0, 0),  # three free 429s: the provider's pace
        ("backed_off", 1, 1),
        ("backed_off", 2, 2),
        ("failed", 3, 2),  # then they count: an endless 429 ends in the dead-letter queue
    ]
    assert [e.throttled for e in message.collect_events() if type(e).__name__ == "BackedOff"] == [
        True,
        True,
        True,
        False,
        False,
    ]
    message.request_retry("ops", now=now)
    assert message.throttles == 0


def test_a_429_answering_a_trial_frees_its_slot_and_decides_nothing() -> None:
    clock = FakeClock(100.0)
    view, store = paced_view(None, clock)
    for _ in range(4):
        view.record("a", transient=True, trial=False, now=T0)
    store.change("a", lambda h: h.half_open(now=T0 + timedelta(seconds=10)), now=T0)
    view.refresh(store)
    later = T0 + timedelta(seconds=11)
    assert isinstance(view.admit("a", later, "t1"), Trial)
    view.record("a", transient=True, trial=True, now=later, status_code=429, retry_after=None)
    assert store.get("a").circuit == "half_open"  # type: ignore[union-attr]
    assert not view.trials["a"].running  # the trial's slot is free for another


def test_a_hold_never_cuts_a_backoff_short() -> None:
    message = Message.receive(
        message_id="m", channel="sms", to="+15550000000", body="x", correlation_id="c", now=T0
    )
    message.start_attempt("a", now=T0)
    message.record_transient_failure("503", error="T", policy=BackoffPolicy(initial=60), now=T0)
    with pytest.raises(RetryNotDueError):
        message.hold("a", until=T0 + timedelta(seconds=1), reason=PACED, now=T0)
