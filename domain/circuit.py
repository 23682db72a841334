"""The circuit breaker's rules, pure: when a provider's failures open its circuit, for how long.

Like MassTransit's kill switch: over a sliding ``window`` of seconds, once at least
``activation_threshold`` attempts were made, a share of transient failures of ``trip_ratio`` or more
opens the circuit. It stays open ``open_for`` seconds, doubled on each consecutive re-open up to
``max_open_for``; then half-open, ``half_open_attempts`` trials decide by the same ratio: their
failures reaching ``trip_ratio`` of them re-open it, else it closes (``trials_verdict``), so a
provider that fails a steady fifth of calls is not held open by one unlucky trial.
Failure counts are per process; the transitions are events of ``ProviderHealth``, seen by all.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class CircuitPolicy:
    """One provider's breaker settings (``[providers.NAME.circuit]``; defaults as documented)."""

    window: float = 30.0
    activation_threshold: int = 20
    trip_ratio: float = 0.5
    open_for: float = 30.0
    max_open_for: float = 600.0
    half_open_attempts: int = 3

    def __post_init__(self) -> None:
        if self.window <= 0 or self.open_for <= 0 or self.max_open_for < self.open_for:
            raise ValueError("circuit: window and open_for must be > 0, max_open_for >= open_for")
        if self.activation_threshold < 1 or self.half_open_attempts < 1:
            raise ValueError("circuit: activation_threshold and half_open_attempts must be >= 1")
        if not 0 < self.trip_ratio <= 1:
            raise ValueError("circuit: trip_ratio must be in (0, 1]")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> CircuitPolicy:
        """From a TOML table; an unknown key or a bad value is a ValueError naming it."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"circuit: unknown setting {unknown[0]!r} (known: {', '.join(sorted(known))})")
        try:
            return cls(**{name: _number(name, value) for name, value in values.items()})
        except TypeError as exc:
            raise ValueError(f"circuit: {exc}") from None

    def open_duration(self, reopenings: int) -> float:
        """How long the circuit stays open after its ``reopenings``-th consecutive re-open."""
        return min(self.open_for * float(2 ** min(reopenings, 32)), self.max_open_for)

    def trials_verdict(self, succeeded: int, failed: int) -> str | None:
        """``OPEN`` once the trials' failures reach ``trip_ratio`` of ``half_open_attempts``,
        ``CLOSED`` once they no longer can, else None (more trials needed)."""
        limit = max(1, math.ceil(self.trip_ratio * self.half_open_attempts - 1e-9))
        if failed >= limit:
            return OPEN
        if succeeded > self.half_open_attempts - limit:
            return CLOSED
        return None

    def trips(self, attempts: int, failures: int) -> bool:
        """Whether this window's counts open the circuit."""
        return attempts >= self.activation_threshold and failures >= self.trip_ratio * attempts


def _number(name: str, value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"circuit: {name} must be a number, not {value!r}")
    return value


class AttemptWindow:
    """The outcomes of one provider's attempts over the last ``seconds`` (this process's)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.outcomes: deque[tuple[float, bool]] = deque()
        self.failures = 0

    def record(self, now: float, *, transient_failure: bool) -> None:
        self._expire(now)
        self.outcomes.append((now, transient_failure))
        self.failures += transient_failure

    def counts(self, now: float) -> tuple[int, int]:
        """(attempts, transient failures) within the window ending at ``now``."""
        self._expire(now)
        return len(self.outcomes), self.failures

    def ratio(self, now: float) -> float:
        attempts, failures = self.counts(now)
        return failures / attempts if attempts else 0.0

    def clear(self) -> None:
        self.outcomes.clear()
        self.failures = 0

    def _expire(self, now: float) -> None:
        while self.outcomes and self.outcomes[0][0] <= now - self.seconds:
            _, failed = self.outcomes.popleft()
            self.failures -= failed
