"""The canary actor: sends a synthetic request every ``interval`` seconds and follows each to
Delivered (``domain.canary``); the ``canary`` alert's sensor reads its ``CanaryLog``.

It runs in one process of a ``smeg run`` group (the first child, or the process itself), so a
group sends one canary per interval; it never holds up delivery (its own connection, its own
thread)."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pykka
import structlog

from domain.canary import CanaryLog, canary_message_id
from domain.request import SendRequest
from smeg_actors.actors.messages import Tick
from smeg_actors.actors.supervisor import Supervised
from smeg_actors.runtime import metrics
from smeg_actors.runtime.clock import Clock

log = structlog.get_logger(__name__)

#: Seconds between looks at the canaries in flight.
SETTLE_EVERY = 1.0


class CanaryActor(Supervised):
    """``send`` publishes a request; ``find`` answers when a message was delivered (None: not yet)."""

    def __init__(
        self,
        name: str,
        supervisor: pykka.ActorRef[Any] | None,
        *,
        canaries: CanaryLog,
        request: Callable[[str], SendRequest],
        send: Callable[[SendRequest], None],
        find: Callable[[str], datetime | None],
        node: str,
        interval: float,
        clock: Clock,
        monotonic: Callable[[], float] = time.monotonic,
        enabled: Callable[[], bool] = lambda: True,
    ) -> None:
        super().__init__(name, supervisor)
        self.canaries, self.request, self.send, self.find = canaries, request, send, find
        self.node, self.interval, self.clock, self.monotonic = node, interval, clock, monotonic
        self.sequence = 0
        self.next_send = monotonic()
        self.next_settle = monotonic() + SETTLE_EVERY
        #: False while the operators' ``canary.enabled`` is: nothing is sent (in flight: followed).
        self.enabled = enabled
        self.failing = False

    def on_receive(self, message: Any) -> Any:
        match message:
            case Tick():
                now = self.monotonic()
                if now >= self.next_send and self.enabled():
                    self.next_send = now + self.interval
                    self._send()
                if now >= self.next_settle:
                    self.next_settle = now + SETTLE_EVERY
                    self._settle()
            case _:
                log.warning("unknown_message_dropped", message=repr(message))
        return None

    def _send(self) -> None:
        """A canary that cannot be sent is recorded as sent all the same: it will be a miss."""
        now = self.clock()
        self.sequence += 1
        message_id = canary_message_id(self.node, self.sequence, now)
        self.canaries.sent(message_id, now)
        try:
            self.send(self.request(message_id))
            self.failing = False
        except Exception as exc:
            if not self.failing:
                log.warning("canary_not_sent", error=f"{type(exc).__name__}: {exc}"[:300])
            self.failing = True

    def _settle(self) -> None:
        if not self.canaries.waiting:
            return
        try:
            delivered = {m: at for m in list(self.canaries.waiting) if (at := self.find(m)) is not None}
        except Exception as exc:  # the store is away: the canaries wait, and may miss
            log.warning("canary_not_followed", error=f"{type(exc).__name__}: {exc}"[:300])
            delivered = {}
        missed = self.canaries.missed
        self.canaries.settle(delivered, self.clock())
        if self.canaries.missed > missed:
            metrics.canary_misses.inc(self.canaries.missed - missed)
            log.warning("canary_missed", misses_in_a_row=self.canaries.misses, slo_seconds=self.canaries.slo)
        if delivered and self.canaries.last_seconds is not None:
            metrics.canary_seconds.set(self.canaries.last_seconds)
