"""The scheduler actor: releases each backed-off message at its ``retry_at``, never earlier.

Its state is the store's: on start it rebuilds the pending retries from the ``message_status``
read model (overdue ones are released at once), and every sweep it adopts messages overdue by
more than ``orphan_margin`` — those of a process that died — so none is dropped. Both read every
such row, page by page, however many there are. With several processes, the store's optimistic
concurrency decides who attempts: one Attempted per version. A retry a person asked for
(``RetryRequested``) is looked for every ``poll_every`` seconds, so it goes out within about a
second wherever it was asked for, not at the next orphan sweep. While delivery is paused
(``paused()``, the operators' ``delivery.paused``) nothing is released: due retries stay backed off
or held, none attempted, none exhausted, and go out on the first tick after the pause ends.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import pykka
import structlog

from domain.ports import (
    UNFINISHED_PAGE,
    MessageNotFoundError,
    MessageRepository,
    RequestedRetries,
    StoreUnavailableError,
    UnfinishedMessages,
)
from smeg_actors.actors.messages import DeliverMessages, GetPending, Recover, ScheduleRetry, Tick, WorkItem
from smeg_actors.actors.supervisor import Children, Supervised
from smeg_actors.runtime import metrics
from smeg_actors.runtime.clock import Clock

log = structlog.get_logger(__name__)


class SchedulerActor(Supervised):
    """Holds pending retries in a heap; see the module docstring.

    Args:
        store: to look at recovered messages.
        unfinished: the index of unfinished messages (the ``message_status`` read model).
        catch_up: brings the read model up to the log's head before the start-up rebuild (later,
            the projector keeps it current).
        children: refs of the dispatcher.
        clock: UTC now.
        stale_after: an attempt older than this with no outcome is deemed interrupted.
        sweep_every: seconds between orphan sweeps.
        orphan_margin: how overdue a message must be before a sweep adopts it.
        page_size: rows of ``message_status`` read per query when adopting (all are read).
        paused: while it returns True nothing is released (read on every tick; no I/O).
        requested: the retries people asked for (None: found by the orphan sweep only).
        poll_every: seconds between looks at ``requested``.
    """

    def __init__(
        self,
        name: str,
        supervisor: pykka.ActorRef[Any] | None,
        *,
        store: MessageRepository,
        unfinished: UnfinishedMessages,
        catch_up: Callable[[], int],
        children: Children,
        clock: Clock,
        stale_after: float,
        sweep_every: float = 5.0,
        orphan_margin: float = 30.0,
        page_size: int = UNFINISHED_PAGE,
        paused: Callable[[], bool] = lambda: False,
        requested: RequestedRetries | None = None,
        poll_every: float = 1.0,
    ) -> None:
        super().__init__(name, supervisor)
        self.store, self.unfinished, self.catch_up = store, unfinished, catch_up
        self.children, self.clock, self.stale_after = children, clock, stale_after
        self.sweep_every = timedelta(seconds=sweep_every)
        self.orphan_margin = timedelta(seconds=orphan_margin)
        self.page_size, self.paused = page_size, paused
        self.heap: list[tuple[datetime, int, UUID]] = []
        self.due: dict[UUID, datetime] = {}
        self.seq = 0
        self.next_sweep = datetime.min.replace(tzinfo=clock().tzinfo)
        self.requested, self.poll_every = requested, timedelta(seconds=poll_every)
        self.next_poll = self.next_sweep
        #: The last requested retry seen, ``(when, id)``: each poll reads only newer ones.
        self.seen: tuple[datetime, UUID] | None = None

    def on_start(self) -> None:
        try:
            self.catch_up()
        except Exception as exc:
            log.warning("status_catch_up_failed", error=f"{type(exc).__name__}: {exc}"[:300])
        self._adopt(before=None)

    def on_receive(self, message: Any) -> Any:
        match message:
            case ScheduleRetry(id=aggregate_id, due=due):
                self._push(aggregate_id, due)
            case Recover(ids=ids):
                for aggregate_id in ids:
                    self._recover(aggregate_id)
            case Tick():
                self._measure()  # before the release: what is overdue now, not what is left
                if not self.paused():
                    self._release()
                if self.clock() >= self.next_sweep:
                    self._adopt(before=self.clock() - self.orphan_margin)
                if self.requested is not None and self.clock() >= self.next_poll:
                    self._poll(self.requested)
            case GetPending():
                return len(self.due)
            case _:
                log.warning("unknown_message_dropped", message=repr(message))
        return None

    def _push(self, aggregate_id: UUID, due: datetime) -> None:
        known = self.due.get(aggregate_id)
        if known is not None and known <= due:
            return
        self.due[aggregate_id] = due
        self.seq += 1
        heapq.heappush(self.heap, (due, self.seq, aggregate_id))

    def _release(self) -> None:
        now = self.clock()
        ready: list[WorkItem] = []
        while self.heap and self.heap[0][0] <= now:
            due, _seq, aggregate_id = heapq.heappop(self.heap)
            if self.due.get(aggregate_id) == due:
                del self.due[aggregate_id]
                ready.append(WorkItem(aggregate_id))
        if ready:
            self.children.tell("dispatcher", DeliverMessages(tuple(ready)))

    def _measure(self) -> None:
        """The pending retries, and how overdue the oldest is (0 when none is past its time)."""
        metrics.retries_pending.set(len(self.due))
        overdue = (self.clock() - self.heap[0][0]).total_seconds() if self.heap else 0.0
        metrics.retry_oldest_overdue.set(max(0.0, overdue))

    def _recover(self, aggregate_id: UUID) -> None:
        try:
            message = self.store.get(aggregate_id)
        except (MessageNotFoundError, StoreUnavailableError) as exc:
            log.warning("recovery_deferred", aggregate_id=str(aggregate_id), error=str(exc))
            self._push(aggregate_id, self.clock() + timedelta(seconds=5))
            return
        due = message.due_at(self.stale_after)
        if due is not None:
            self._push(aggregate_id, due)

    def _poll(self, requested: RequestedRetries) -> None:
        """Push the retries asked for since the last look (one page; the rest next time). One
        that slips past (its row projected after a newer one) is adopted by the orphan sweep."""
        self.next_poll = self.clock() + self.poll_every
        try:
            rows = requested(self.seen)
        except Exception as exc:
            log.warning("requested_retries_unreadable", error=f"{type(exc).__name__}: {exc}"[:300])
            return
        for aggregate_id, when in rows:
            self._push(aggregate_id, when)
        if rows:
            self.seen = (rows[-1][1], rows[-1][0])
            self.next_poll = self.clock()  # look again at the next tick: a bulk retry may hold more
            log.info("requested_retries_found", count=len(rows))

    def _adopt(self, *, before: datetime | None) -> None:
        """Push every unfinished message (due before ``before``, for a sweep), page by page.

        A page that fails to load ends this walk; what it already pushed stays, and the next
        sweep walks again.
        """
        self.next_sweep = self.clock() + self.sweep_every
        count = 0
        try:
            for page in self.unfinished(
                stale_after=self.stale_after, before=before, page_size=self.page_size
            ):
                for aggregate_id, due in page:
                    self._push(aggregate_id, due)
                count += len(page)
        except Exception as exc:
            log.warning("pending_rebuild_failed", error=f"{type(exc).__name__}: {exc}"[:300], adopted=count)
            return
        if count:
            log.info("pending_messages_adopted", count=count, sweep=before is not None)
