"""What the workers obey: each provider's health as the store last recorded it, and this process's
circuit breakers, which record transitions there.

The store is the record (``ProviderHealth`` events); the view is a cache of it, refreshed by
``ProviderHealthActor`` about once a second, so every process sees a transition another wrote
within ~1 s. Failure counts are this process's (``AttemptWindow``): when they trip a closed circuit,
or a half-open trial fails or enough trials succeed, the transition is written at once and this
process obeys it before the next refresh. Two processes deciding at once: the aggregate refuses
the second write, and the loser reads what the winner wrote.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import pykka
import structlog

from domain.circuit import CLOSED, HALF_OPEN, OPEN, AttemptWindow, CircuitPolicy
from domain.errors import InvalidTransitionError
from domain.message import THROTTLED
from domain.pacing import Pace
from domain.ports import Hold, Peers, ProviderHealthRepository, Trial
from domain.provider_health import ProviderHealth
from smeg_actors.actors.messages import Tick
from smeg_actors.actors.supervisor import Supervised
from smeg_actors.runtime import metrics
from smeg_actors.runtime.clock import Clock

log = structlog.get_logger(__name__)

#: How often a held message of a disabled provider is looked at again.
DISABLED_RECHECK = timedelta(seconds=5)
#: How often a message held while a half-open circuit's trials run is looked at again.
TRIAL_RECHECK = timedelta(seconds=2)
#: The soonest a held message is looked at again: the health actor half-opens a circuit within a
#: second of its open period's end, so an earlier look would only find it still open.
MIN_RECHECK = timedelta(seconds=1)
TRIAL = Trial()
#: Why a message waits for a slot of its provider's pace (one reason: one Held per wait).
PACED = "paced to the provider's rate"


class NoHolds:
    """A gate that holds nothing: where no provider health is kept."""

    def admit(self, provider: str, now: datetime, key: Hashable | None = None) -> Hold | Trial | None:
        return None

    def record(self, provider: str, *, transient: bool, trial: bool, now: datetime, **_: Any) -> None:
        return None


#: The gate of a worker that keeps no provider health.
NO_HOLDS = NoHolds()


#: A trial admitted but never answered (its attempt was not begun after all: a conflict, a store
#: outage retried) stops counting as running after this many seconds.
TRIAL_SLOT_TTL = 15.0


@dataclass
class _Trials:
    """One half-open period's trials in this process: when each running one was admitted
    (monotonic), and how many succeeded and failed."""

    since: datetime | None
    running: list[float] = field(default_factory=list)
    succeeded: int = 0
    failed: int = 0

    def free(self, now: float) -> int:
        self.running = [at for at in self.running if now - at < TRIAL_SLOT_TTL]
        return len(self.running)


class ProviderHealthView:
    """The ``ProviderGate`` port: a snapshot of every configured provider's health, and breakers."""

    def __init__(
        self,
        names: Iterable[str],
        *,
        repository: ProviderHealthRepository | None = None,
        policies: Mapping[str, CircuitPolicy] | None = None,
        limits: Mapping[str, float | None] | None = None,
        opened_by: str = "",
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.names = tuple(names)
        self.repository, self.opened_by, self.monotonic = repository, opened_by, monotonic
        self.policies = {name: (policies or {}).get(name, CircuitPolicy()) for name in self.names}
        self.windows = {name: AttemptWindow(self.policies[name].window) for name in self.names}
        self.snapshot: dict[str, ProviderHealth] = {}
        self.trials: dict[str, _Trials] = {}
        self.paces = {name: Pace(limit=(limits or {}).get(name)) for name in self.names}
        self.lock = threading.Lock()

    def admit(self, provider: str, now: datetime, key: Hashable | None = None) -> Hold | Trial | None:
        health = self.snapshot.get(provider)
        if health is None or _free(health):
            return self._paced(provider, now, key)
        if health.disabled:
            return Hold(
                now + DISABLED_RECHECK, f"provider disabled by {health.disabled_by}: {health.disabled_reason}"
            )
        if health.circuit == OPEN and health.open_until is not None:
            why = f"circuit open ({health.failure_ratio:.0%} transient failures)"
            return Hold(max(health.open_until, now) + MIN_RECHECK, why)
        with self.lock:
            trials = self._trials(provider, health)
            if trials.free(self.monotonic()) < self.policies[provider].half_open_attempts:
                trials.running.append(self.monotonic())
                return TRIAL
        return Hold(now + TRIAL_RECHECK, "circuit half-open: trials under way")

    def record(
        self,
        provider: str,
        *,
        transient: bool,
        trial: bool,
        now: datetime,
        status_code: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        if provider not in self.policies:
            return
        if status_code == THROTTLED:  # the provider's pace, not its health: neither success nor failure
            with self.lock:
                self.paces[provider].throttled(self.monotonic(), retry_after)
                health = self.snapshot.get(provider)
                if trial and health is not None:
                    self._trials(provider, health).running[:1] = []  # its slot is free again
            return
        if self.repository is None:
            return
        with self.lock:
            decide = self._judge_trial if trial else self._count
            transition = decide(provider, transient)
        if transition is not None:
            self._write(provider, transition, now)

    def refresh(self, repository: ProviderHealthRepository) -> None:
        """Read every provider's health; the snapshot is replaced whole (readers never lock)."""
        fresh = {name: health for name in self.names if (health := repository.get(name)) is not None}
        with self.lock:  # a transition this process wrote meanwhile is newer than what was read
            for name, known in self.snapshot.items():
                if name not in fresh or fresh[name].version < known.version:
                    fresh[name] = known
            changed = {n for n in fresh if _state(fresh.get(n)) != _state(self.snapshot.get(n))}
            for name in changed:
                self._maybe_ramp(self.snapshot.get(name), fresh[name])
            self.snapshot = fresh
        for name in sorted(changed):
            log.info("provider_health_seen", provider=name, state=fresh[name].state)
        for name in self.names:
            state = fresh[name].state if name in fresh else CLOSED
            metrics.circuit_state.labels(name).set(metrics.CIRCUIT_VALUES.get(state, 0))

    def share(self, processes: int) -> None:
        """How many live processes share each provider's rate limit."""
        with self.lock:
            for pace in self.paces.values():
                pace.share = 1.0 / max(1, processes)

    def _paced(self, provider: str, now: datetime, key: Hashable | None) -> Hold | None:
        pace = self.paces.get(provider)
        if pace is None:
            return None
        with self.lock:
            wait = pace.admit(key, self.monotonic())
        if not wait:
            return None
        return Hold(now + timedelta(seconds=wait), PACED, paced=True)

    def _maybe_ramp(self, before: ProviderHealth | None, after: ProviderHealth) -> None:
        """A provider that took no attempts and takes them again is ramped up (caller locks)."""
        if before is not None and not _free(before) and _free(after):
            self.paces[after.name].closed(self.monotonic())

    def due_half_open(self, now: datetime) -> list[str]:
        """Providers whose open period is over (the health actor half-opens them)."""
        return [
            name
            for name, health in self.snapshot.items()
            if health.circuit == OPEN and health.open_until is not None and health.open_until <= now
        ]

    def _trials(self, provider: str, health: ProviderHealth) -> _Trials:
        trials = self.trials.get(provider)
        if trials is None or trials.since != health.since:
            trials = self.trials[provider] = _Trials(health.since)
        return trials

    def _count(self, provider: str, transient: bool) -> Callable[[ProviderHealth, datetime], None] | None:
        window = self.windows[provider]
        window.record(self.monotonic(), transient_failure=transient)
        health = self.snapshot.get(provider)
        if health is not None and health.circuit != CLOSED:
            return None
        attempts, failures = window.counts(self.monotonic())
        policy = self.policies[provider]
        if not policy.trips(attempts, failures):
            return None
        window.clear()
        reason = f"{failures} of {attempts} attempts failed transiently within {policy.window:g} s"
        return self._opener(reason, failures / attempts, policy)

    def _judge_trial(
        self, provider: str, transient: bool
    ) -> Callable[[ProviderHealth, datetime], None] | None:
        health = self.snapshot.get(provider)
        if health is None or health.circuit != HALF_OPEN:
            return None
        trials = self._trials(provider, health)
        if trials.running:
            trials.running.pop(0)
        trials.failed += transient
        trials.succeeded += not transient
        policy = self.policies[provider]
        verdict = policy.trials_verdict(trials.succeeded, trials.failed)
        if verdict == OPEN:
            tried = trials.succeeded + trials.failed
            reason = f"{trials.failed} of {tried} half-open trials failed"
            return self._opener(reason, trials.failed / tried, policy)
        if verdict is None:
            return None
        self.windows[provider].clear()
        return lambda health, now: health.close_circuit(probe_latency_ms=None, now=now)

    def _opener(
        self, reason: str, ratio: float, policy: CircuitPolicy
    ) -> Callable[[ProviderHealth, datetime], None]:
        def open_it(health: ProviderHealth, now: datetime) -> None:
            health.open_circuit(
                reason=reason,
                failure_ratio=ratio,
                window=policy.window,
                opened_by=self.opened_by,
                policy=policy,
                now=now,
            )

        return open_it

    def _write(self, provider: str, apply: Callable[[ProviderHealth, datetime], None], now: datetime) -> None:
        """Record a transition; refused (another process got there first) or not, obey the store."""
        assert self.repository is not None
        try:
            health = self.repository.change(provider, lambda h: apply(h, now), now=now)
            level = logging.WARNING if health.circuit == OPEN else logging.INFO  # open: a person may look
            log.log(level, "circuit_changed", provider=provider, state=health.state, by=self.opened_by)
        except InvalidTransitionError:
            health_or_none = self.repository.get(provider)
            if health_or_none is None:
                return
            health = health_or_none
        except Exception as exc:
            log.warning(
                "circuit_change_not_recorded", provider=provider, error=f"{type(exc).__name__}: {exc}"[:300]
            )
            return
        with self.lock:
            known = self.snapshot.get(provider)
            if known is None or known.version <= health.version:
                self._maybe_ramp(known, health)
                self.snapshot = {**self.snapshot, provider: health}


def _free(health: ProviderHealth) -> bool:
    """Takes every attempt: enabled, its circuit closed."""
    return not health.disabled and health.circuit == CLOSED


def _state(health: ProviderHealth | None) -> tuple[str, Any] | None:
    return None if health is None else (health.state, health.open_until)


class ProviderHealthActor(Supervised):
    """Refreshes the view every ``every`` seconds of ticks, and half-opens circuits whose open
    period is over (the store decides which process writes it). Every ``beat_every`` seconds it
    tells ``peers`` this process is alive, and learns how many share each rate limit."""

    def __init__(
        self,
        name: str,
        supervisor: pykka.ActorRef[Any] | None,
        *,
        view: ProviderHealthView,
        repository: ProviderHealthRepository,
        clock: Clock,
        every: float = 1.0,
        peers: Peers | None = None,
        process: str = "",
        beat_every: float = 2.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(name, supervisor)
        self.view, self.repository, self.clock = view, repository, clock
        self.every, self.monotonic = every, monotonic
        self.peers, self.process, self.beat_every = peers, process, beat_every
        self.next_at = self.next_beat = 0.0
        self.live = 1
        self.failing = False

    def on_stop(self) -> None:
        if self.peers is not None:
            try:
                self.peers.leave(self.process)
            except Exception as exc:
                log.warning("process_not_unregistered", error=f"{type(exc).__name__}: {exc}"[:300])

    def on_start(self) -> None:
        self._refresh()

    def on_receive(self, message: Any) -> Any:
        match message:
            case Tick():
                if self.monotonic() >= self.next_at:
                    self._refresh()
            case _:
                log.warning("unknown_message_dropped", message=repr(message))
        return None

    def _refresh(self) -> None:
        self.next_at = self.monotonic() + self.every
        self._beat()
        try:
            self.view.refresh(self.repository)
            for provider in self.view.due_half_open(self.clock()):
                self._half_open(provider)
        except Exception as exc:
            if not self.failing:
                log.warning("provider_health_unreadable", error=f"{type(exc).__name__}: {exc}"[:300])
            self.failing = True
            return
        self.failing = False

    def _beat(self) -> None:
        """A failed beat keeps the last count (the health view is refreshed all the same)."""
        if self.peers is None or self.monotonic() < self.next_beat:
            return
        self.next_beat = self.monotonic() + self.beat_every
        try:
            live = self.peers.beat(self.process, self.clock())
        except Exception as exc:
            log.warning("process_heartbeat_failed", error=f"{type(exc).__name__}: {exc}"[:300])
            return
        if live != self.live:
            log.info("delivery_processes_seen", live=live, rate_share=f"1/{live}")
        self.live = live
        self.view.share(live)

    def _half_open(self, provider: str) -> None:
        now = self.clock()
        try:
            self.repository.change(provider, lambda health: health.half_open(now=now), now=now)
            log.info("circuit_half_opened", provider=provider)
        except InvalidTransitionError:
            pass  # another process half-opened it
        self.view.refresh(self.repository)
