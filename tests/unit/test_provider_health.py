"""ProviderHealth: every transition of the circuit and the operators' switch, and its invariants."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import reduce
from typing import Any

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from domain.circuit import CLOSED, HALF_OPEN, OPEN, CircuitPolicy
from domain.errors import (
    CircuitAlreadyOpenError,
    CircuitNotHalfOpenError,
    CircuitNotOpenError,
    InvalidTransitionError,
    OpenPeriodNotOverError,
    ProviderAlreadyDisabledError,
    ProviderNotDisabledError,
)
from domain.provider_health import DISABLED, ProviderHealth

T0 = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
POLICY = CircuitPolicy(open_for=30, max_open_for=600)


def opened(health: ProviderHealth, now: datetime, *, by: str = "pid 1") -> None:
    health.open_circuit(
        reason="5 of 8 attempts failed", failure_ratio=0.625, window=30, opened_by=by, policy=POLICY, now=now
    )


def replayed(health: ProviderHealth) -> ProviderHealth:
    """The aggregate rebuilt from its events, as the store would load it."""
    events = health.collect_events()
    rebuilt: Any = reduce(lambda aggregate, event: event.mutate(aggregate), events, None)
    return rebuilt


def test_a_new_provider_is_closed_enabled_and_accepts_attempts() -> None:
    health = ProviderHealth.register("a", now=T0)
    assert (health.name, health.state, health.circuit) == ("a", CLOSED, CLOSED)
    assert health.accepts_attempts() and not health.disabled
    assert health.id == ProviderHealth.create_id("a") != ProviderHealth.create_id("b")


def test_open_then_half_open_after_the_period_then_closed() -> None:
    health = ProviderHealth.register("a", now=T0)
    opened(health, T0)
    assert health.state == OPEN and not health.accepts_attempts()
    assert health.open_until == T0 + timedelta(seconds=30) and health.since == T0
    with pytest.raises(OpenPeriodNotOverError):
        health.half_open(now=T0 + timedelta(seconds=29))
    health.half_open(now=T0 + timedelta(seconds=30))
    assert health.state == HALF_OPEN and health.accepts_attempts()
    health.close_circuit(probe_latency_ms=12.5, now=T0 + timedelta(seconds=31))
    assert (health.state, health.open_until, health.reopenings) == (CLOSED, None, 0)


def test_a_failed_trial_reopens_for_twice_as_long_and_a_close_resets_the_doubling() -> None:
    health = ProviderHealth.register("a", now=T0)
    now = T0
    periods = []
    for _ in range(7):
        opened(health, now)
        assert health.open_until is not None
        periods.append((health.open_until - now).total_seconds())
        now = health.open_until
        health.half_open(now=now)
    assert periods == [30, 60, 120, 240, 480, 600, 600]
    health.close_circuit(probe_latency_ms=None, now=now)
    opened(health, now)
    assert health.reopenings == 0 and health.open_until == now + timedelta(seconds=30)


def test_a_second_opener_is_refused_so_one_writer_wins_each_transition() -> None:
    health = ProviderHealth.register("a", now=T0)
    opened(health, T0, by="pid 1")
    with pytest.raises(CircuitAlreadyOpenError):
        opened(health, T0, by="pid 2")


def test_transitions_out_of_order_are_refused() -> None:
    health = ProviderHealth.register("a", now=T0)
    with pytest.raises(CircuitNotOpenError):
        health.half_open(now=T0)
    with pytest.raises(CircuitNotHalfOpenError):
        health.close_circuit(probe_latency_ms=1.0, now=T0)
    opened(health, T0)
    with pytest.raises(CircuitNotHalfOpenError):
        health.close_circuit(probe_latency_ms=1.0, now=T0 + timedelta(hours=1))


def test_disabled_is_a_switch_over_the_circuit_and_records_who() -> None:
    health = ProviderHealth.register("a", now=T0)
    health.disable(by="alice", reason="provider incident 42", now=T0)
    assert health.state == DISABLED and not health.accepts_attempts() and health.circuit == CLOSED
    assert (health.disabled_by, health.disabled_reason) == ("alice", "provider incident 42")
    with pytest.raises(ProviderAlreadyDisabledError, match="alice"):
        health.disable(by="bob", reason="again", now=T0)
    opened(health, T0)  # the circuit goes on being kept while disabled
    health.enable(by="bob", now=T0 + timedelta(seconds=1))
    assert health.state == OPEN and health.disabled_by is None
    with pytest.raises(ProviderNotDisabledError):
        health.enable(by="bob", now=T0)


def test_the_history_replays_to_the_same_state() -> None:
    health = ProviderHealth.register("a", now=T0)
    opened(health, T0)
    health.half_open(now=T0 + timedelta(seconds=30))
    health.disable(by="alice", reason="r", now=T0 + timedelta(seconds=31))
    rebuilt = replayed(health)
    assert vars(rebuilt) == vars(health)
    assert (rebuilt.state, rebuilt.circuit, rebuilt.disabled_by) == (DISABLED, HALF_OPEN, "alice")


class ProviderHealthMachine(RuleBasedStateMachine):
    """Any sequence of commands, refused or not, leaves a state its own events rebuild."""

    def __init__(self) -> None:
        super().__init__()
        self.now = T0
        self.health = ProviderHealth.register("a", now=self.now)
        self.events: list[Any] = list(self.health.collect_events())

    def _try(self, command: Any) -> None:
        try:
            command()
        except InvalidTransitionError:
            pass
        self.events += self.health.collect_events()

    @rule(seconds=st.floats(0, 1200))
    def time_passes(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)

    @rule()
    def open_circuit(self) -> None:
        before = (self.health.circuit, self.health.reopenings)
        self._try(lambda: opened(self.health, self.now))
        if before[0] == HALF_OPEN:
            assert self.health.reopenings == before[1] + 1
        if before[0] == CLOSED:
            assert self.health.reopenings == 0

    @rule()
    def half_open(self) -> None:
        self._try(lambda: self.health.half_open(now=self.now))

    @rule()
    def close(self) -> None:
        self._try(lambda: self.health.close_circuit(probe_latency_ms=1.0, now=self.now))

    @rule(who=st.sampled_from(["alice", "bob"]))
    def disable(self, who: str) -> None:
        self._try(lambda: self.health.disable(by=who, reason="r", now=self.now))

    @rule(who=st.sampled_from(["alice", "bob"]))
    def enable(self, who: str) -> None:
        self._try(lambda: self.health.enable(by=who, now=self.now))

    @invariant()
    def consistent(self) -> None:
        health = self.health
        assert health.accepts_attempts() == (not health.disabled and health.circuit != OPEN)
        assert (health.open_until is not None) == (health.circuit in (OPEN, HALF_OPEN))
        if health.circuit == CLOSED:
            assert (health.reopenings, health.failure_ratio) == (0, 0.0)
        if health.circuit == OPEN and health.open_until is not None and health.since is not None:
            period = (health.open_until - health.since).total_seconds()
            assert period == POLICY.open_duration(health.reopenings) <= POLICY.max_open_for

    @invariant()
    def replays(self) -> None:
        rebuilt: Any = reduce(lambda aggregate, event: event.mutate(aggregate), self.events, None)
        assert vars(rebuilt) == vars(self.health)


TestProviderHealthMachine = ProviderHealthMachine.TestCase


def test_unavailable_since_spans_every_re_open_and_half_open_until_it_closes() -> None:
    health = ProviderHealth.register("a", now=T0)
    assert health.unavailable_since is None
    now = T0
    for _ in range(3):  # an outage outlasting several open periods
        opened(health, now)
        assert health.open_until is not None
        now = health.open_until
        health.half_open(now=now)
        assert health.unavailable_since == T0  # state_since moves; this does not
    assert health.state_since == now
    health.close_circuit(probe_latency_ms=None, now=now)
    assert health.unavailable_since is None
    assert replayed(health).unavailable_since is None
    health.disable(by="ops", reason="x", now=now)
    assert health.unavailable_since == now
