"""What the workers obey: each provider's health as the store last recorded it, refreshed by an
actor about once a second, so every process sees a transition another wrote within ~1 s.

The store is the record (``ProviderHealth`` events); this is a cache of it. A read that fails
keeps the last view and is tried again on the next tick: an outage of the store stops nothing
that is not already stopped.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Any

import pykka
import structlog

from domain.circuit import OPEN
from domain.ports import Hold, ProviderHealthRepository
from domain.provider_health import ProviderHealth
from smeg_actors.actors.messages import Tick
from smeg_actors.actors.supervisor import Supervised

log = structlog.get_logger(__name__)

#: How often a held message of a disabled provider is looked at again.
DISABLED_RECHECK = timedelta(seconds=5)


class NoHolds:
    """A gate that holds nothing: where no provider health is kept."""

    def hold_for(self, provider: str, now: datetime) -> Hold | None:
        return None


#: The gate of a worker that keeps no provider health.
NO_HOLDS = NoHolds()


class ProviderHealthView:
    """The ``ProviderGate`` port over a snapshot of every configured provider's health."""

    def __init__(self, names: Iterable[str]) -> None:
        self.names = tuple(names)
        self.snapshot: dict[str, ProviderHealth] = {}

    def hold_for(self, provider: str, now: datetime) -> Hold | None:
        health = self.snapshot.get(provider)
        if health is None:
            return None
        if health.disabled:
            return Hold(
                now + DISABLED_RECHECK, f"provider disabled by {health.disabled_by}: {health.disabled_reason}"
            )
        if health.circuit == OPEN and health.open_until is not None:
            return Hold(
                max(health.open_until, now), f"circuit open ({health.failure_ratio:.0%} transient failures)"
            )
        return None

    def refresh(self, repository: ProviderHealthRepository) -> None:
        """Read every provider's health; the snapshot is replaced whole (readers never lock)."""
        fresh = {name: health for name in self.names if (health := repository.get(name)) is not None}
        changed = {n for n in fresh if _state(fresh.get(n)) != _state(self.snapshot.get(n))}
        self.snapshot = fresh
        for name in sorted(changed):
            log.info("provider_health_seen", provider=name, state=fresh[name].state)


def _state(health: ProviderHealth | None) -> tuple[str, Any] | None:
    return None if health is None else (health.state, health.open_until)


class ProviderHealthActor(Supervised):
    """Refreshes the view every ``every`` seconds of ticks."""

    def __init__(
        self,
        name: str,
        supervisor: pykka.ActorRef[Any] | None,
        *,
        view: ProviderHealthView,
        repository: ProviderHealthRepository,
        every: float = 1.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(name, supervisor)
        self.view, self.repository, self.every, self.monotonic = view, repository, every, monotonic
        self.next_at = 0.0
        self.failing = False

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
        try:
            self.view.refresh(self.repository)
        except Exception as exc:
            if not self.failing:
                log.warning("provider_health_unreadable", error=f"{type(exc).__name__}: {exc}"[:300])
            self.failing = True
            return
        self.failing = False
