"""Group commit: many callers' changes saved in one transaction by one committer thread.

The event store's writes are serialised (SQLite's single writer, PostgreSQL's table lock), so
throughput comes from few, large transactions. Callers hand their changes to the committer and
wait; whatever arrives while a transaction runs goes into the next one. Each caller still gets
its own outcomes, and a caller whose change raised gets that error, not the others.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Generic, TypeVar

#: What callers hand in (``event_store.Decided``) and what each gets back (``event_store.Outcome``).
Item = TypeVar("Item")
Result = TypeVar("Result")


class CommitTimeoutError(Exception):
    """The committer did not answer in time (the database hangs)."""


class GroupCommitter(Generic[Item, Result]):
    """Runs ``commit(items) -> results`` on one thread, merging concurrent requests.

    Args:
        commit: saves a list of changes in one transaction (``MessageStore._commit``), one
            result per item, in order.
        max_changes: the most changes merged into one transaction.
    """

    def __init__(self, commit: Callable[[Sequence[Item]], list[Result]], *, max_changes: int = 2000) -> None:
        self._commit, self.max_changes = commit, max_changes
        self._requests: queue.Queue[tuple[Sequence[Item], Future[list[Result]]] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="smeg-committer", daemon=True)
        self._started = False
        self._lock = threading.Lock()

    def submit(self, changes: Sequence[Item], timeout: float) -> list[Result]:
        """Commit ``changes`` with whatever else is waiting; raise CommitTimeoutError after ``timeout``."""
        self._ensure_started()
        future: Future[list[Result]] = Future()
        self._requests.put((changes, future))
        try:
            return future.result(timeout)
        except FutureTimeout:
            raise CommitTimeoutError(f"no answer from the store within {timeout:g}s") from None

    def close(self) -> None:
        if self._started:
            self._requests.put(None)

    def _ensure_started(self) -> None:
        with self._lock:
            if not self._started:
                self._started = True
                self._thread.start()

    def _run(self) -> None:
        while True:
            first = self._requests.get()
            if first is None:
                return
            batch = [first]
            size = len(first[0])
            while size < self.max_changes:
                try:
                    item = self._requests.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._requests.put(None)
                    break
                batch.append(item)
                size += len(item[0])
            self._commit_batch(batch)

    def _commit_batch(self, batch: list[tuple[Sequence[Item], Future[list[Result]]]]) -> None:
        live = [(changes, future) for changes, future in batch if future.set_running_or_notify_cancel()]
        merged = [change for changes, _future in live for change in changes]
        try:
            outcomes = self._commit(merged)
        except BaseException as exc:
            for _changes, future in live:
                future.set_exception(exc)
            return
        start = 0
        for changes, future in live:
            future.set_result(outcomes[start : start + len(changes)])
            start += len(changes)
