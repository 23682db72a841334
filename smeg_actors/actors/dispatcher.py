"""The dispatcher actor: hands due messages to the workers in batches, never one twice at once.

It bounds the work in flight (pykka inboxes are unbounded); the intake holds back while the
backlog is above its limit. When a worker is restarted, every batch it held is sent back to the
scheduler for recovery, so a crash loses nothing. A message due again while its batch is still
running (a hold re-checked at once, a very short backoff) waits for that batch to finish, then is
queued: never two at once, never dropped. On a graceful stop it drains: no new batch
starts, the held ones finish; queued messages are durable (Received or BackedOff) and the next
process adopts them. While delivery is paused (``paused()``) it hands out nothing: queued messages
wait, unattempted, and go out on the first tick after the pause ends.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import pykka
import structlog

from smeg_actors.actors.messages import (
    BatchFinished,
    DeliverBatch,
    DeliverMessages,
    Drain,
    IsIdle,
    Recover,
    Tick,
    WorkItem,
)
from smeg_actors.actors.supervisor import Children, Supervised

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class WorkerRestarted:
    """The supervisor replaced a worker: the batches it held need recovery."""

    name: str


class Backlog:
    """Messages queued or held by workers, as the dispatcher last counted them.

    The dispatcher writes it and the intake's backpressure reads it from the consumer thread: asking
    the actor instead cost a proxy and a round trip through its inbox on every batch.
    """

    value: int = 0


class DispatcherActor(Supervised):
    """Distributes work; see the module docstring.

    Args:
        workers: names of the worker children.
        children: the shared name → ref table.
        batch_size: the most messages one worker gets at once.
        batches_per_worker: batches queued at one worker at most.
        backlog: where the backlog is published for other threads (survives a restart).
        paused: while it returns True no batch is handed out (no I/O; ticks resume the work).
    """

    def __init__(
        self,
        name: str,
        supervisor: pykka.ActorRef[Any] | None,
        *,
        workers: list[str],
        children: Children,
        batch_size: int = 64,
        batches_per_worker: int = 2,
        backlog: Backlog | None = None,
        paused: Callable[[], bool] = lambda: False,
    ) -> None:
        super().__init__(name, supervisor)
        self.workers, self.children = workers, children
        self.batch_size, self.batches_per_worker = batch_size, batches_per_worker
        self.queue: deque[WorkItem] = deque()
        self.queued: set[UUID] = set()
        self.held: dict[str, list[tuple[UUID, ...]]] = {w: [] for w in workers}
        self.active: set[UUID] = set()  # every id in a held batch, kept as batches come and go
        self.deferred: dict[UUID, WorkItem] = {}  # due again while active: queued once released
        self.backlog = backlog or Backlog()
        self.backlog.value = 0
        self.draining = False
        self.paused = paused

    def on_receive(self, message: Any) -> Any:
        match message:
            case DeliverMessages(items=items):
                self._enqueue(items)
            case BatchFinished(ids=ids):
                self._release(ids)
            case WorkerRestarted(name=name):
                for ids in self.held.get(name, []):
                    self.active.difference_update(ids)
                    for i in ids:  # recovered below: the scheduler looks at each again
                        self.deferred.pop(i, None)
                    self.children.tell("scheduler", Recover(ids))
                self.held[name] = []
            case IsIdle():
                return (self.draining or not self.queue) and not any(self.held.values())
            case Drain():
                self.draining = True
            case Tick():
                pass  # the pump below: what a pause kept queued goes out once it ends
            case _:
                log.warning("unknown_message_dropped", message=repr(message))
        self._pump()
        self.backlog.value = len(self.queue) + len(self.active)
        return None

    def _enqueue(self, items: tuple[WorkItem, ...]) -> None:
        active = self.active
        for item in items:
            if item.id in active:
                self.deferred[item.id] = item
            elif item.id not in self.queued:
                self.queue.append(item)
                self.queued.add(item.id)

    def _release(self, ids: tuple[UUID, ...]) -> None:
        for batches in self.held.values():
            if ids in batches:
                batches.remove(ids)
                self.active.difference_update(ids)
                self._enqueue(tuple(self.deferred.pop(i) for i in ids if i in self.deferred))
                return

    def _pump(self) -> None:
        while self.queue and not self.draining and not self.paused():
            worker = min(self.workers, key=lambda w: len(self.held[w]))
            if len(self.held[worker]) >= self.batches_per_worker:
                return
            free = sum(max(0, self.batches_per_worker - len(self.held[w])) for w in self.workers)
            share = -(-len(self.queue) // max(free, 1))
            size = min(self.batch_size, share, len(self.queue))
            batch = tuple(self._take() for _ in range(size))
            ids = tuple(item.id for item in batch)
            self.held[worker].append(ids)
            self.active.update(ids)
            self.children.tell(worker, DeliverBatch(batch))

    def _take(self) -> WorkItem:
        item = self.queue.popleft()
        self.queued.discard(item.id)
        return item
