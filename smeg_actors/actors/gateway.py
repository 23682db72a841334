"""The gateway actor: publishes every lifecycle event to the events exchange, a batch per tick.

An event the exchange cannot take because of its own data is parked by the publisher and the
batch goes on; only a broker or store failure pauses publication (and is tried again).
"""

from __future__ import annotations

import time
from typing import Any

import pykka
import structlog

from domain.ports import LogOutbox
from smeg_actors.actors.messages import GetParked, GetPublished, Tick
from smeg_actors.actors.supervisor import Supervised

log = structlog.get_logger(__name__)


class GatewayActor(Supervised):
    """Drives the events outbox (``adapters.events_exchange``); when the broker fails, tries later."""

    def __init__(
        self,
        name: str,
        supervisor: pykka.ActorRef[Any] | None,
        *,
        publisher: LogOutbox,
        max_batches_per_tick: int = 10,
    ) -> None:
        super().__init__(name, supervisor)
        self.publisher, self.max_batches = publisher, max_batches_per_tick
        self.retry_at = 0.0
        self.published = 0

    def on_receive(self, message: Any) -> Any:
        match message:
            case Tick():
                self._publish()
            case GetPublished():
                return self.published
            case GetParked():
                return self.publisher.parked
            case _:
                log.warning("unknown_message_dropped", message=repr(message))
        return None

    def on_stop(self) -> None:
        self.publisher.close()

    def _publish(self) -> None:
        if time.monotonic() < self.retry_at:
            return
        try:
            for _ in range(self.max_batches):
                count = self.publisher.publish_pending()
                self.published += count
                if not count:
                    break
            self.publisher.keep_alive()
        except Exception as exc:
            log.warning("events_publication_deferred", error=f"{type(exc).__name__}: {exc}"[:300])
            self.retry_at = time.monotonic() + 2.0
