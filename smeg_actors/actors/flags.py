"""What every part of a delivery process obeys of the operators' flags (``domain.flags``): a
snapshot of their values, refreshed from the store every second by ``FlagsActor``, so a flag
set anywhere is obeyed by every process and node within about 2 s.

Readers never touch the store: the consumer thread, the scheduler, the dispatcher and the
workers read a dict that the actor replaces whole. ``delivery.paused`` stops the intake
consuming, the scheduler releasing and the dispatcher handing out work; a message a worker
already holds is held (``Held``, no attempt), as is every message of a paused channel
(``delivery.paused.sms``): the send queue is shared, so those are received, then held until
their channel resumes. On resume the held ones this process knows are released at once.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar
from uuid import UUID

import pykka
import structlog

from domain.flags import (
    CANARY_ENABLED,
    DELIVERY_PAUSED,
    GLOBAL,
    KNOWN,
    REDRIVE_AUTO,
    Flags,
    paused_flag,
    values_at,
)
from domain.ports import FlagRepository, Hold
from domain.request import CHANNELS
from domain.routing import Admission, Choice, RoutingPolicy
from smeg_actors.actors.messages import ScheduleRetry, Tick
from smeg_actors.actors.supervisor import Children, ChildSpec, Supervised
from smeg_actors.runtime.clock import Clock, utc_now

log = structlog.get_logger(__name__)

R = TypeVar("R")

#: How long a message held by a pause waits before it is looked at again, should its release on
#: resume not reach it (its process died, a worker held it just as the pause ended).
PAUSE_RECHECK = timedelta(seconds=60)


def pause_reason(scope: str) -> str:
    """The ``Held`` reason of a pause (one per wait: the same reason is not recorded twice)."""
    return "delivery paused" if scope == GLOBAL else f"delivery paused for channel {scope}"


class FlagsView:
    """The flags in force in this process: ``value(name)`` reads a snapshot (no I/O, no lock)."""

    def __init__(self) -> None:
        self.flags: Flags | None = None
        self.values: dict[str, bool] = values_at(None, utc_now())
        #: Messages this process held for a pause, by scope (``global`` or a channel).
        self.parked: dict[str, set[UUID]] = {}
        self.lock = threading.Lock()

    def value(self, name: str) -> bool:
        return self.values[name]

    def delivery_paused(self) -> bool:
        return self.values[DELIVERY_PAUSED]

    def redrive_auto(self) -> bool:
        return self.values[REDRIVE_AUTO]

    def canary_enabled(self) -> bool:
        return self.values[CANARY_ENABLED]

    def paused_scope(self, channel: str) -> str | None:
        """What holds a message of ``channel``: ``global``, the channel, or None (not paused)."""
        if self.values[DELIVERY_PAUSED]:
            return GLOBAL
        return channel if self.values.get(paused_flag(channel), False) else None

    def pause_reason(self) -> str | None:
        """What an operator paused (the alerts it explains are inhibited), or None."""
        if self.values[DELIVERY_PAUSED]:
            return pause_reason(GLOBAL)
        channels = [c for c in CHANNELS if self.values.get(paused_flag(c), False)]
        return f"delivery paused for channel {', '.join(channels)}" if channels else None

    def refresh(self, repository: FlagRepository, now: datetime) -> dict[str, bool]:
        """Read the flags; the snapshot is replaced whole. Returns the flags whose value changed."""
        flags = repository.get()
        values = values_at(flags, now)
        changed = {name: value for name, value in values.items() if value != self.values[name]}
        self.flags, self.values = flags, values
        return changed

    def park(self, scope: str, message: UUID) -> None:
        with self.lock:
            self.parked.setdefault(scope, set()).add(message)

    def unpark(self, scope: str) -> set[UUID]:
        with self.lock:
            return self.parked.pop(scope, set())


@dataclass(frozen=True)
class PausingRouting(RoutingPolicy):
    """The routing policy, holding every message of a paused channel (or all, when delivery is
    paused) for its first candidate instead of choosing: no provider is asked, no attempt made."""

    flags: FlagsView | None = None
    clock: Clock = utc_now

    @classmethod
    def over(cls, policy: RoutingPolicy, flags: FlagsView, clock: Clock) -> PausingRouting:
        settings = {f.name: getattr(policy, f.name) for f in dataclasses.fields(RoutingPolicy)}
        return cls(**settings, flags=flags, clock=clock)

    def choose(
        self,
        *,
        pinned: str | None,
        channel: str,
        key: UUID,
        failures: Mapping[str, int],
        admit: Callable[[str], Admission],
    ) -> Choice:
        scope = self.flags.paused_scope(channel) if self.flags is not None else None
        if scope is None:
            return super().choose(pinned=pinned, channel=channel, key=key, failures=failures, admit=admit)
        assert self.flags is not None
        self.flags.park(scope, key)
        provider = self.candidates(pinned, channel, key)[0]
        return Choice(provider, Hold(self.clock() + PAUSE_RECHECK, pause_reason(scope)))


class FlagsActor(Supervised):
    """Refreshes the view every ``every`` seconds of ticks; says when delivery is paused or
    resumed (a warning, with who and why), and on resume releases what this process held."""

    def __init__(
        self,
        name: str,
        supervisor: pykka.ActorRef[Any] | None,
        *,
        view: FlagsView,
        repository: FlagRepository,
        children: Children,
        clock: Clock,
        every: float = 1.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(name, supervisor)
        self.view, self.repository, self.children, self.clock = view, repository, children, clock
        self.every, self.monotonic = every, monotonic
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
        """A failed read keeps the last snapshot (the defaults before the first read)."""
        self.next_at = self.monotonic() + self.every
        now = self.clock()
        try:
            changed = self.view.refresh(self.repository, now)
        except Exception as exc:
            if not self.failing:
                log.warning("flags_unreadable", error=f"{type(exc).__name__}: {exc}"[:300])
            self.failing = True
            return
        self.failing = False
        for name, value in changed.items():
            self._announce(name, value, now)
            if name.startswith(DELIVERY_PAUSED) and not value:
                self._release(KNOWN[name].scope, now)

    def _announce(self, name: str, value: bool, now: datetime) -> None:
        """One line per change: who set it and why; a setting that ran out says ``expired``."""
        flags = self.view.flags
        entry = flags.entries.get(name) if flags is not None else None
        fields: dict[str, Any] = {"flag": name, "scope": KNOWN[name].scope}
        if entry is not None:
            expires_at = entry.expires_at.isoformat() if entry.expires_at is not None else None
            fields |= {"by": entry.by, "reason": entry.reason, "expires_at": expires_at}
            fields |= {} if entry.in_force(now) else {"expired": True}
        if name.startswith(DELIVERY_PAUSED):
            log.warning("delivery_paused" if value else "delivery_resumed", **fields)
            return
        level = logging.INFO if value == KNOWN[name].default else logging.WARNING
        log.log(level, "flag_changed", value=value, **fields)

    def _release(self, scope: str, now: datetime) -> None:
        """Messages this process held for the pause just ended go back to the scheduler, due now
        (one still paused otherwise, say its channel, is held again for that)."""
        held = self.view.unpark(scope)
        for message in held:
            self.children.tell("scheduler", ScheduleRetry(message, now))
        if held:
            log.info("paused_messages_released", scope=scope, count=len(held))


class AutoRedriveOff(Exception):
    """The operators turned the automatic redrive off (``redrive.auto`` false)."""


def when_redrive_auto(view: FlagsView, open_reader: Callable[[], R]) -> Callable[[], R]:
    """``open_reader`` for the automatic redriver, refused (``AutoRedriveOff``) while
    ``redrive.auto`` is false: the redriver then opens no queue and redrives nothing."""

    def opened() -> R:
        if not view.redrive_auto():
            raise AutoRedriveOff("automatic redrive is off (flag redrive.auto is false)")
        return open_reader()

    return opened


def flags_specs(
    view: FlagsView, repository: FlagRepository | None, children: Children, clock: Clock
) -> list[ChildSpec]:
    """The flags actor's place in the tree (none where no flags are kept: the view's defaults)."""
    if repository is None:
        return []
    return [
        ChildSpec(
            "flags",
            lambda sup: FlagsActor.start(
                "flags", sup, view=view, repository=repository, children=children, clock=clock
            ),
        )
    ]
