"""This process's breakers (``ProviderHealthView``): when failures open a circuit, what is held,
how half-open trials decide, and two processes deciding at once — over an in-memory store."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from domain.circuit import CLOSED, HALF_OPEN, OPEN, CircuitPolicy
from domain.ports import Hold, Trial
from smeg_actors.actors.provider_health import DISABLED_RECHECK, MIN_RECHECK, ProviderHealthView
from tests.fakes import FakeClock, InMemoryProviderHealth

T0 = datetime(2026, 12, 7, 12, 0, tzinfo=timezone.utc)
POLICY = CircuitPolicy(window=30, activation_threshold=4, trip_ratio=0.5, open_for=10, half_open_attempts=2)


@pytest.fixture
def store() -> InMemoryProviderHealth:
    return InMemoryProviderHealth()


def view(
    store: InMemoryProviderHealth, clock: FakeClock | None = None, who: str = "pid 1"
) -> ProviderHealthView:
    monotonic = clock or FakeClock(0.0)
    made = ProviderHealthView(
        ["a"], repository=store, policies={"a": POLICY}, opened_by=who, monotonic=monotonic
    )
    made.refresh(store)
    return made


def fail(gate: ProviderHealthView, times: int, *, transient: bool = True) -> None:
    for _ in range(times):
        gate.record("a", transient=transient, trial=False, now=T0)


def test_failures_open_the_circuit_once_enough_attempts_were_made(store: InMemoryProviderHealth) -> None:
    gate = view(store)
    fail(gate, 3)
    assert store.get("a") is None and gate.admit("a", T0) is None  # 3 < activation threshold
    fail(gate, 1)
    health = store.get("a")
    assert health is not None and health.circuit == OPEN
    [opened] = [e for e in store.events["a"] if type(e).__name__ == "CircuitOpened"]
    assert (opened.opened_by, opened.failure_ratio, opened.window) == ("pid 1", 1.0, 30)
    assert opened.reason == "4 of 4 attempts failed transiently within 30 s"
    hold = gate.admit("a", T0 + timedelta(seconds=1))  # obeyed at once, before any refresh
    assert isinstance(hold, Hold) and hold.until == T0 + timedelta(seconds=10) + MIN_RECHECK
    assert hold.reason == "circuit open (100% transient failures)"


def test_permanent_failures_and_successes_keep_it_closed(store: InMemoryProviderHealth) -> None:
    gate = view(store)
    fail(gate, 20, transient=False)
    fail(gate, 19)  # 19 of 39: under the 50 % trip ratio
    assert store.get("a") is None


def test_old_failures_leave_the_window(store: InMemoryProviderHealth) -> None:
    clock = FakeClock(0.0)
    gate = view(store, clock)
    fail(gate, 3)
    clock.now = 31.0
    fail(gate, 3)
    assert store.get("a") is None  # never 4 within 30 s


def test_half_open_admits_a_few_trials_holds_the_rest_and_closes_on_their_success(
    store: InMemoryProviderHealth,
) -> None:
    gate = view(store)
    fail(gate, 4)
    store.change("a", lambda h: h.half_open(now=T0 + timedelta(seconds=10)), now=T0)
    gate.refresh(store)
    now = T0 + timedelta(seconds=11)
    assert [gate.admit("a", now) for _ in range(2)] == [Trial(), Trial()]
    third = gate.admit("a", now)
    assert isinstance(third, Hold) and third.reason == "circuit half-open: trials under way"
    gate.record("a", transient=False, trial=True, now=now)
    assert store.get("a").circuit == HALF_OPEN  # type: ignore[union-attr]
    gate.record("a", transient=False, trial=True, now=now)
    assert store.get("a").circuit == CLOSED  # type: ignore[union-attr]
    assert gate.admit("a", now) is None


def test_a_failed_trial_reopens_for_twice_as_long(store: InMemoryProviderHealth) -> None:
    gate = view(store)
    fail(gate, 4)
    store.change("a", lambda h: h.half_open(now=T0 + timedelta(seconds=10)), now=T0)
    gate.refresh(store)
    now = T0 + timedelta(seconds=11)
    assert gate.admit("a", now) == Trial()
    gate.record("a", transient=True, trial=True, now=now)
    health = store.get("a")
    assert health is not None and (health.circuit, health.reopenings) == (OPEN, 1)
    assert health.open_until == now + timedelta(seconds=20)


def test_two_processes_tripping_at_once_write_one_opening_and_both_obey_it(
    store: InMemoryProviderHealth,
) -> None:
    first, second = view(store, who="pid 1"), view(store, who="pid 2")
    fail(first, 4)
    fail(second, 4)  # decided on its own stale view: the store refuses, it reads the winner's
    assert [type(e).__name__ for e in store.events["a"]] == ["Registered", "CircuitOpened"]
    assert all(isinstance(g.admit("a", T0), Hold) for g in (first, second))


def test_a_disabled_provider_is_held_and_looked_at_again_every_few_seconds(
    store: InMemoryProviderHealth,
) -> None:
    store.change("a", lambda h: h.disable(by="alice", reason="incident 42", now=T0), now=T0)
    gate = view(store)
    hold = gate.admit("a", T0)
    assert hold == Hold(T0 + DISABLED_RECHECK, "provider disabled by alice: incident 42")
    assert gate.admit("unknown", T0) is None
