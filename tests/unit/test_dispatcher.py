"""DispatcherActor: bounded batches per worker, no id twice at once, draining, worker restarts."""

from __future__ import annotations

import uuid
from typing import Any
from uuid import UUID

import pykka

from smeg_actors.actors.dispatcher import Backlog, DispatcherActor, WorkerRestarted
from smeg_actors.actors.messages import (
    BatchFinished,
    DeliverBatch,
    DeliverMessages,
    IsIdle,
    Recover,
    WorkItem,
)
from smeg_actors.actors.supervisor import Children

WAIT = 5.0


class FakeWorker(pykka.ThreadingActor):
    """Records every DeliverBatch; answers BatchFinished only when the test asks it to."""

    def __init__(self, children: Children) -> None:
        super().__init__()
        self.children = children
        self.batches: list[tuple[UUID, ...]] = []
        self.finished: set[int] = set()

    def on_receive(self, message: Any) -> Any:
        match message:
            case DeliverBatch(items=items):
                self.batches.append(tuple(item.id for item in items))
            case "batches":
                return list(self.batches)
            case "outstanding":
                return [i for i in range(len(self.batches)) if i not in self.finished]
            case ("finish", int(index)):
                self.finished.add(index)
                self.children.get("dispatcher").tell(BatchFinished(self.batches[index]))
                return self.batches[index]
        return None


class FakeScheduler(pykka.ThreadingActor):
    def __init__(self) -> None:
        super().__init__()
        self.recovered: list[tuple[UUID, ...]] = []

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Recover):
            self.recovered.append(message.ids)
        elif message == "recovered":
            return list(self.recovered)
        return None


class Rig:
    def __init__(self, workers: int, *, batch_size: int, batches_per_worker: int) -> None:
        self.children = Children()
        self.backlog = Backlog()
        self.names = [f"worker-{i}" for i in range(workers)]
        for name in self.names:
            self.children.set(name, FakeWorker.start(self.children))
        self.scheduler = FakeScheduler.start()
        self.children.set("scheduler", self.scheduler)
        self.dispatcher = DispatcherActor.start(
            "dispatcher",
            None,
            workers=self.names,
            children=self.children,
            batch_size=batch_size,
            batches_per_worker=batches_per_worker,
            backlog=self.backlog,
        )
        self.children.set("dispatcher", self.dispatcher)

    def deliver(self, ids: list[UUID]) -> None:
        self.dispatcher.tell(DeliverMessages(tuple(WorkItem(i) for i in ids)))
        self.idle()  # handled, so its DeliverBatch tells are queued at the workers

    def idle(self) -> bool:
        answer: bool = self.dispatcher.ask(IsIdle(), timeout=WAIT)
        return answer

    def batches(self, worker: str) -> list[tuple[UUID, ...]]:
        found: list[tuple[UUID, ...]] = self.children.get(worker).ask("batches", timeout=WAIT)
        return found

    def outstanding(self, worker: str) -> list[int]:
        """Indexes of the worker's batches not finished yet."""
        found: list[int] = self.children.get(worker).ask("outstanding", timeout=WAIT)
        return found

    def all_batches(self) -> list[tuple[UUID, ...]]:
        return [b for name in self.names for b in self.batches(name)]

    def finish(self, worker: str, index: int) -> tuple[UUID, ...]:
        ids: tuple[UUID, ...] = self.children.get(worker).ask(("finish", index), timeout=WAIT)
        self.idle()  # the BatchFinished is handled and any new batch queued
        return ids

    def finish_everything(self) -> list[UUID]:
        """Finish batches until the dispatcher is idle; return every id handed out, in order."""
        done: list[UUID] = []
        for _ in range(100):
            pending = [(w, index) for w in self.names for index in self.outstanding(w)]
            if not pending:
                return done
            for worker, index in pending:
                done.extend(self.finish(worker, index))
        raise AssertionError(f"batches still outstanding after 100 rounds: {pending}")


def ids(n: int) -> list[UUID]:
    return [uuid.uuid4() for _ in range(n)]


def test_never_more_than_batches_per_worker_outstanding_at_one_worker() -> None:
    # Given
    rig = Rig(2, batch_size=3, batches_per_worker=2)
    # When far more work arrives than the workers may hold
    rig.deliver(ids(30))
    # Then each worker holds exactly its limit, and the rest waits
    assert [len(rig.batches(w)) for w in rig.names] == [2, 2]
    assert all(len(b) == 3 for b in rig.all_batches())
    assert not rig.idle()
    # And more work does not overload them either
    rig.deliver(ids(10))
    assert [len(rig.batches(w)) for w in rig.names] == [2, 2]


def test_batches_are_at_most_batch_size_and_spread_over_every_worker() -> None:
    # Given
    rig = Rig(3, batch_size=4, batches_per_worker=2)
    work = ids(20)
    # When
    rig.deliver(work)
    # Then
    assert all(rig.batches(w) for w in rig.names)
    # And once everything is finished, each message went out exactly once, in batches of at most 4
    done = rig.finish_everything()
    assert sorted(done) == sorted(work)
    assert all(1 <= len(b) <= 4 for b in rig.all_batches())


def test_small_delivery_is_shared_between_idle_workers_not_given_to_one() -> None:
    # Given
    rig = Rig(2, batch_size=64, batches_per_worker=2)
    # When
    rig.deliver(ids(10))
    # Then both workers got part of it
    sizes = [sum(len(b) for b in rig.batches(w)) for w in rig.names]
    assert sum(sizes) == 10
    assert all(size > 0 for size in sizes)


def test_same_id_is_never_queued_or_in_flight_twice() -> None:
    # Given one worker holding `a`, with `b` and `c` queued
    rig = Rig(1, batch_size=1, batches_per_worker=1)
    a, b, c, d = ids(4)
    rig.deliver([a, b, c])
    assert rig.batches("worker-0") == [(a,)]
    # When `a` (in flight), `b` (queued), `d` twice (new) arrive again
    rig.deliver([a, b, d, d])
    # Then no id is queued or in flight twice at once: `a` goes out again only after its batch
    done = rig.finish_everything()
    assert sorted(done) == sorted([a, b, c, d, a])
    assert done.index(a) == 0 and done[1:].count(a) == 1
    assert rig.idle()


def test_a_message_due_again_while_its_batch_runs_is_handed_out_once_that_batch_finishes() -> None:
    # Given `a` in a batch that holds it (say, until its provider takes attempts)
    rig = Rig(1, batch_size=8, batches_per_worker=1)
    [a] = ids(1)
    rig.deliver([a])
    # When the scheduler releases it again before the batch is finished
    rig.deliver([a])
    assert rig.batches("worker-0") == [(a,)]
    rig.finish("worker-0", 0)
    # Then it is not lost: it goes out in the next batch
    assert rig.batches("worker-0") == [(a,), (a,)]


def test_id_may_be_handed_out_again_once_its_batch_finished() -> None:
    # Given
    rig = Rig(1, batch_size=8, batches_per_worker=1)
    [a] = ids(1)
    rig.deliver([a])
    rig.finish("worker-0", 0)
    # When the message comes back (a retry)
    rig.deliver([a])
    # Then
    assert rig.batches("worker-0") == [(a,), (a,)]


def test_batch_finished_frees_capacity_and_the_queue_drains() -> None:
    # Given one worker with room for one batch of two, and five messages
    rig = Rig(1, batch_size=2, batches_per_worker=1)
    work = ids(5)
    rig.deliver(work)
    assert rig.batches("worker-0") == [tuple(work[0:2])]
    # When / Then: each BatchFinished lets the next batch out
    rig.finish("worker-0", 0)
    assert rig.batches("worker-0")[1:] == [tuple(work[2:4])]
    rig.finish("worker-0", 1)
    assert rig.batches("worker-0")[2:] == [(work[4],)]
    assert not rig.idle()
    rig.finish("worker-0", 2)
    assert rig.idle()
    assert len(rig.batches("worker-0")) == 3


def test_idle_only_when_nothing_is_queued_or_held() -> None:
    # Given
    rig = Rig(1, batch_size=1, batches_per_worker=1)
    assert rig.idle()
    a, b = ids(2)
    # When something is held and something queued
    rig.deliver([a, b])
    assert not rig.idle()
    # When only something is held
    rig.finish("worker-0", 0)
    assert rig.batches("worker-0") == [(a,), (b,)]
    assert not rig.idle()
    # When everything finished
    rig.finish("worker-0", 1)
    assert rig.idle()


def test_unknown_batch_finished_changes_nothing() -> None:
    # Given
    rig = Rig(1, batch_size=2, batches_per_worker=1)
    rig.deliver(ids(3))
    # When a BatchFinished that matches no held batch arrives
    rig.dispatcher.tell(BatchFinished(tuple(ids(2))))
    # Then the worker gets nothing new and the dispatcher still holds its work
    assert not rig.idle()
    assert len(rig.batches("worker-0")) == 1


def test_a_message_due_again_in_a_restarted_worker_s_batch_is_recovered_once_not_also_handed_out() -> None:
    # Given `a` due again while the batch holding it runs
    rig = Rig(1, batch_size=8, batches_per_worker=1)
    [a] = ids(1)
    rig.deliver([a])
    rig.deliver([a])
    # When its worker is restarted, and the dead worker's BatchFinished comes late
    rig.dispatcher.tell(WorkerRestarted("worker-0"))
    rig.idle()
    rig.dispatcher.tell(BatchFinished((a,)))
    rig.idle()
    # Then it goes to the scheduler for recovery, and is not handed out behind its back
    assert rig.scheduler.ask("recovered", timeout=WAIT) == [(a,)]
    assert rig.batches("worker-0") == [(a,)]
    # and once the scheduler hands it out again, that one batch is all: nothing stale follows it
    rig.deliver([a])
    rig.finish("worker-0", 1)
    assert rig.batches("worker-0") == [(a,), (a,)]


def test_worker_restarted_sends_its_batches_to_the_scheduler_and_frees_its_capacity() -> None:
    # Given two workers, each holding two batches, and more work queued
    rig = Rig(2, batch_size=2, batches_per_worker=2)
    rig.deliver(ids(12))
    held_by_0 = rig.batches("worker-0")
    held_by_1 = rig.batches("worker-1")
    assert len(held_by_0) == 2
    # When worker-0 is restarted
    rig.dispatcher.tell(WorkerRestarted("worker-0"))
    rig.idle()
    # Then every batch it held is sent for recovery, and nothing of worker-1's
    assert rig.scheduler.ask("recovered", timeout=WAIT) == held_by_0
    # And its capacity is free again: it gets two new batches from the queue
    new_for_0 = rig.batches("worker-0")[2:]
    assert len(new_for_0) == 2
    assert not set(new_for_0) & set(held_by_0)
    assert rig.batches("worker-1") == held_by_1


def test_late_batch_finished_from_a_restarted_worker_is_harmless() -> None:
    # Given worker-0's batch was recovered after a restart
    rig = Rig(1, batch_size=2, batches_per_worker=1)
    work = ids(4)
    rig.deliver(work)
    rig.dispatcher.tell(WorkerRestarted("worker-0"))
    rig.idle()
    assert rig.batches("worker-0") == [tuple(work[0:2]), tuple(work[2:4])]
    # When the old batch's BatchFinished arrives late
    rig.finish("worker-0", 0)
    # Then the new batch is still held
    assert not rig.idle()
    rig.finish("worker-0", 1)
    assert rig.idle()


def test_the_backlog_other_threads_read_counts_queued_and_held_messages() -> None:
    # Given: 2 workers × 1 batch of 3 at most
    rig = Rig(2, batch_size=3, batches_per_worker=1)

    # When: 10 arrive (6 held by workers, 4 queued)
    rig.deliver(ids(10))

    # Then
    assert rig.backlog.value == 10

    # When: one batch finishes (3 leave, 3 more are handed out)
    rig.finish("worker-0", 0)

    # Then
    assert rig.backlog.value == 7
    rig.finish_everything()
    assert rig.backlog.value == 0
