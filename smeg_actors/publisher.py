"""The publisher actor: puts failed messages on the dead-letter queue, with confirms.

It owns its broker connection (pika is not thread-safe); publications that fail are kept
and retried on the next ticks, and heartbeats are serviced on every tick.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

import pykka
import structlog

from domain.ports import FailurePublisher
from smeg_actors.logs import message_context
from smeg_actors.messages import PublishFailed, Tick
from smeg_actors.supervisor import Children, Supervised

log = structlog.get_logger(__name__)


class PublisherActor(Supervised):
    """Publishes to ``{prefix}.failed``; tells the redriver about exhausted failures."""

    def __init__(
        self,
        name: str,
        supervisor: pykka.ActorRef[Any] | None,
        *,
        publisher: FailurePublisher,
        children: Children,
    ) -> None:
        super().__init__(name, supervisor)
        self.publisher, self.children = publisher, children
        self.pending: deque[PublishFailed] = deque()
        self.published = 0
        self.retry_at = 0.0
        self.delay = 0.5

    def on_receive(self, message: Any) -> Any:
        match message:
            case PublishFailed():
                self.pending.append(message)
                self._flush()
            case Tick():
                self._flush()
                keep_alive = getattr(self.publisher, "keep_alive", None)
                if keep_alive is not None:
                    keep_alive()
            case "published":
                return self.published
            case _:
                log.warning("unknown_message_dropped", message=repr(message))
        return None

    def on_stop(self) -> None:
        self._flush()
        close = getattr(self.publisher, "close", None)
        if close is not None:
            close()

    def _flush(self) -> None:
        if time.monotonic() < self.retry_at:
            return
        while self.pending:
            item = self.pending[0]
            with message_context(item.request.message_id, item.request.correlation_id):
                try:
                    self.publisher.publish_failed(item.request, dict(item.headers))
                except Exception as exc:
                    log.warning(
                        "failed_publication_deferred",
                        error=str(exc)[:200],
                        queued=len(self.pending),
                        retry_in_s=self.delay,
                    )
                    self.retry_at = time.monotonic() + self.delay
                    self.delay = min(self.delay * 2, 30.0)
                    return
                self.delay = 0.5
                log.info("failed_message_published", reason=dict(item.headers).get("x-smeg-reason"))
            self.pending.popleft()
            self.published += 1
