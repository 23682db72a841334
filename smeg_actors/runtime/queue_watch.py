"""Reads the depth of smeg's queues every few seconds into ``smeg_queue_messages``: one reader per
``smeg run`` group (the process that serves the ops endpoints), so the broker is asked once."""

from __future__ import annotations

import threading
import time

import structlog

from adapters.queue_depth import QueueDepths
from adapters.rabbitmq import Topology
from smeg_actors.runtime import metrics

log = structlog.get_logger(__name__)

#: Seconds between reads.
EVERY = 5.0


class QueueWatch(threading.Thread):
    """Sets the gauge; a failed read is logged once per outage and leaves the last values."""

    def __init__(self, url: str, prefix: str, every: float = EVERY) -> None:
        super().__init__(name="smeg-queue-watch", daemon=True)
        self.depths = QueueDepths(url, Topology(prefix))
        self.every = every
        self.halt = threading.Event()
        self.failing = False
        #: When the send queue was last seen empty (monotonic; None: not yet).
        self.empty_at: float | None = None

    def run(self) -> None:
        while not self.halt.is_set():
            try:
                depths = self.depths.read()
                for queue, count in depths.items():
                    metrics.child(metrics.queue_messages, queue).set(count)
                self._oldest(depths.get("send", 0))
                self.failing = False
            except Exception as exc:
                if not self.failing:
                    log.warning("queue_depth_unreadable", error=f"{type(exc).__name__}: {exc}"[:300])
                self.failing = True
            self.halt.wait(self.every)
        self.depths.close()

    def _oldest(self, waiting: int) -> None:
        """``smeg_send_queue_oldest_seconds``: RabbitMQ does not tell a message's age without
        taking it, so the bound is the time since the queue was last seen empty (for a reader
        started during a backlog: since its first read, the age it can vouch for)."""
        now = time.monotonic()
        if waiting == 0 or self.empty_at is None:
            self.empty_at = now
        metrics.send_queue_oldest.set(now - self.empty_at if waiting else 0.0)

    def stop(self) -> None:
        self.halt.set()
