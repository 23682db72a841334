"""ProviderHealth: one provider's circuit and its operators' switch, as events in the same store.

Every process decides from its own failure counts (``domain.circuit``) but records the decision
here, so the store's optimistic concurrency lets one writer win each transition and every process
and node learns it from the log. ``accepts_attempts`` is what the scheduler and workers obey.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate

from domain.circuit import CLOSED, HALF_OPEN, OPEN, CircuitPolicy
from domain.errors import (
    CircuitAlreadyOpenError,
    CircuitNotHalfOpenError,
    CircuitNotOpenError,
    OpenPeriodNotOverError,
    ProviderAlreadyDisabledError,
    ProviderNotDisabledError,
)

DISABLED = "disabled"

#: Namespace of provider-health ids (``uuid5(namespace, name)``): one aggregate per provider name.
HEALTH_NAMESPACE = uuid5(NAMESPACE_URL, "smeg:provider-health")


class ProviderHealth(Aggregate):
    """A provider's circuit (closed / open / half-open) and whether an operator disabled it."""

    class Registered(Aggregate.Created):
        """smeg began to keep this provider's health."""

        name: str

    class CircuitOpened(Aggregate.Event):
        """Attempts stop: failures tripped the breaker (or a trial failed) until ``open_until``."""

        reason: str
        failure_ratio: float
        window: float
        opened_by: str
        open_until: datetime
        reopenings: int

        def apply(self, aggregate: ProviderHealth) -> None:
            if aggregate.circuit == CLOSED:
                aggregate.down_since = self.timestamp
            aggregate.circuit = OPEN
            aggregate.open_until = self.open_until
            aggregate.reopenings = self.reopenings
            aggregate.failure_ratio = self.failure_ratio
            aggregate.since = self.timestamp

    class CircuitHalfOpened(Aggregate.Event):
        """The open period is over: a few real attempts (trials) decide."""

        def apply(self, aggregate: ProviderHealth) -> None:
            aggregate.circuit = HALF_OPEN
            aggregate.since = self.timestamp

    class CircuitClosed(Aggregate.Event):
        """Trials succeeded: attempts flow again (released at a bounded pace)."""

        probe_latency_ms: float | None

        def apply(self, aggregate: ProviderHealth) -> None:
            aggregate.circuit = CLOSED
            aggregate.down_since = None
            aggregate.open_until = None
            aggregate.reopenings = 0
            aggregate.failure_ratio = 0.0
            aggregate.since = self.timestamp

    class ProviderDisabled(Aggregate.Event):
        """An operator stopped attempts through this provider (the kill switch)."""

        by: str
        reason: str

        def apply(self, aggregate: ProviderHealth) -> None:
            aggregate.disabled_by, aggregate.disabled_reason = self.by, self.reason
            aggregate.disabled_at = self.timestamp

    class ProviderEnabled(Aggregate.Event):
        """An operator allowed attempts through this provider again."""

        by: str

        def apply(self, aggregate: ProviderHealth) -> None:
            aggregate.disabled_by = aggregate.disabled_reason = aggregate.disabled_at = None

    def __init__(self, name: str) -> None:
        self.name = name
        self.circuit = CLOSED
        self.open_until: datetime | None = None
        self.reopenings = 0
        self.failure_ratio = 0.0
        self.since: datetime | None = None
        #: When the circuit last left closed (re-opens and half-opens in between do not move it).
        self.down_since: datetime | None = None
        self.disabled_by: str | None = None
        self.disabled_reason: str | None = None
        self.disabled_at: datetime | None = None

    @staticmethod
    def create_id(name: str) -> UUID:
        return uuid5(HEALTH_NAMESPACE, name)

    @classmethod
    def register(cls, name: str, *, now: datetime) -> ProviderHealth:
        return cls._create(cls.Registered, id=cls.create_id(name), name=name, timestamp=now)

    @property
    def disabled(self) -> bool:
        return self.disabled_by is not None

    @property
    def state(self) -> str:
        """``disabled`` over the circuit's own state: what ``smeg providers`` shows."""
        return DISABLED if self.disabled else self.circuit

    @property
    def state_since(self) -> datetime | None:
        """When the state ``state`` names began (None: closed since it was first seen)."""
        return self.disabled_at if self.disabled else self.since

    @property
    def unavailable_since(self) -> datetime | None:
        """Since when the provider has not taken every attempt (disabled, or its circuit not
        closed through open and half-open periods alike); None while it does."""
        if self.disabled:
            return self.disabled_at
        return self.down_since if self.circuit != CLOSED else None

    def accepts_attempts(self) -> bool:
        """Whether an attempt may be sent (half-open: only trials, which the caller limits)."""
        return not self.disabled and self.circuit != OPEN

    def open_circuit(
        self,
        *,
        reason: str,
        failure_ratio: float,
        window: float,
        opened_by: str,
        policy: CircuitPolicy,
        now: datetime,
    ) -> None:
        """Open a closed circuit, or re-open a half-open one (a failed trial doubles the period)."""
        if self.circuit == OPEN:
            raise CircuitAlreadyOpenError(f"{self.name}: circuit already open until {self.open_until}")
        reopenings = self.reopenings + 1 if self.circuit == HALF_OPEN else 0
        until = now + timedelta(seconds=policy.open_duration(reopenings))
        self._trigger(
            self.CircuitOpened,
            now,
            reason=reason,
            failure_ratio=failure_ratio,
            window=window,
            opened_by=opened_by,
            open_until=until,
            reopenings=reopenings,
        )

    def half_open(self, *, now: datetime) -> None:
        if self.circuit != OPEN:
            raise CircuitNotOpenError(f"{self.name}: circuit is {self.circuit}, not open")
        assert self.open_until is not None
        if now < self.open_until:
            raise OpenPeriodNotOverError(f"{self.name}: open until {self.open_until.isoformat()}")
        self._trigger(self.CircuitHalfOpened, now)

    def close_circuit(self, *, probe_latency_ms: float | None, now: datetime) -> None:
        if self.circuit != HALF_OPEN:
            raise CircuitNotHalfOpenError(f"{self.name}: circuit is {self.circuit}, not half-open")
        self._trigger(self.CircuitClosed, now, probe_latency_ms=probe_latency_ms)

    def disable(self, *, by: str, reason: str, now: datetime) -> None:
        if self.disabled:
            raise ProviderAlreadyDisabledError(f"{self.name}: already disabled by {self.disabled_by}")
        self._trigger(self.ProviderDisabled, now, by=by, reason=reason)

    def enable(self, *, by: str, now: datetime) -> None:
        if not self.disabled:
            raise ProviderNotDisabledError(f"{self.name}: not disabled")
        self._trigger(self.ProviderEnabled, now, by=by)

    def _trigger(self, event_class: type[Aggregate.Event], now: datetime, **fields: Any) -> None:
        self.trigger_event(event_class, timestamp=now, **fields)
