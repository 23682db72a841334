"""The publisher actor: drives the dead-letter outbox (a ``LogOutbox``: ``adapters.failed_outbox``).

Failed messages reach ``{prefix}.failed`` from the event log, not from memory: a worker's
``PublishFailed`` only says "look soon" (within a tick; nudges in between are one look), and a
tick looks as well every ``sweep_every`` seconds, for failures no local worker announced (another
node's, a dead process's). Looking on every tick, ten times a second, cost a tenth of the
interpreter lock on PostgreSQL, for nothing. A publication that fails is retried on later ticks
with a growing pause; nothing is lost meanwhile, because the position in the log moves only after
a batch is published. A failure that cannot be published because of its own data is parked by
the outbox (``smeg projections parked``) and does not hold up the others. The actor owns the
broker connection (pika is not thread-safe) and services its heartbeats on every tick.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pykka
import structlog

from domain.ports import LogOutbox
from smeg_actors.actors.messages import GetPublished, PublishFailed, Tick
from smeg_actors.actors.supervisor import Children, Supervised

log = structlog.get_logger(__name__)

#: The shortest time between two looks at the log that nudges cause (one tick).
NUDGE_GAP = 0.1


class PublisherActor(Supervised):
    """Publishes the log's failures to ``{prefix}.failed``, in order, at least once."""

    def __init__(
        self,
        name: str,
        supervisor: pykka.ActorRef[Any] | None,
        *,
        outbox: LogOutbox,
        children: Children,
        sweep_every: float = 1.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(name, supervisor)
        self.outbox, self.children, self.sweep_every = outbox, children, sweep_every
        self.monotonic = monotonic
        self.next_sweep = self.last_look = monotonic() - sweep_every
        self.published = 0
        self.parked = outbox.parked
        self.retry_at = 0.0
        self.delay = 0.5

    def on_receive(self, message: Any) -> Any:
        match message:
            case PublishFailed():
                self.next_sweep = min(self.next_sweep, self.last_look + NUDGE_GAP)
                if self.monotonic() >= self.next_sweep:
                    self._flush()
            case Tick():
                if self.monotonic() >= self.next_sweep:
                    self._flush()
                self.outbox.keep_alive()
            case GetPublished():
                return self.published
            case _:
                log.warning("unknown_message_dropped", message=repr(message))
        return None

    def on_stop(self) -> None:
        self._flush()
        self.outbox.close()

    def _flush(self) -> None:
        if self.monotonic() < self.retry_at:
            return
        self.last_look = self.monotonic()
        self.next_sweep = self.last_look + self.sweep_every
        try:
            while settled := self.outbox.publish_pending():
                parked = self.outbox.parked
                published, self.parked = settled - (parked - self.parked), parked
                self.published += published
                log.info("failed_messages_published", count=published)
        except Exception as exc:
            log.warning("failed_publication_deferred", error=str(exc)[:200], retry_in_s=self.delay)
            self.retry_at = self.monotonic() + self.delay
            self.delay = min(self.delay * 2, 30.0)
            return
        self.delay = 0.5
