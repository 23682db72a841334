"""The deployment's ``Flags`` aggregate in the event store's own log, like providers' health: a
switch is one row, read by every process and node; the messages' followers of the log leave it
out (``MessageStore.read_events`` keeps only messages' events).

Writes are rare (an operator's ``smeg flags set``) and go straight to the application. Each try
loads the aggregate afresh and applies the change again (library-notes G1: a failed ``save``
leaves the objects it was given without their pending events).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from eventsourcing.application import AggregateNotFoundError
from eventsourcing.persistence import IntegrityError, PersistenceError

from adapters.event_store import MessageStore
from adapters.store_connection import one_line
from domain.flags import Flags
from domain.ports import ConflictError, StoreUnavailableError

#: Tries of one change before other writers' conflicting writes make it give up.
TRIES = 5


class FlagStore:
    """The ``FlagRepository`` port over a ``MessageStore``'s application."""

    def __init__(self, store: MessageStore) -> None:
        self.app = store.app

    def get(self) -> Flags | None:
        try:
            flags: Flags = self.app.repository.get(Flags.create_id())
        except AggregateNotFoundError:
            return None
        except PersistenceError as exc:
            raise StoreUnavailableError(one_line(exc)) from None
        return flags

    def change(self, apply: Callable[[Flags], None], *, now: datetime) -> Flags:
        for _ in range(TRIES):
            flags = self.get() or Flags.start(now=now)
            apply(flags)
            try:
                self.app.save(flags)
            except IntegrityError:
                continue  # another writer took the version: apply again on what it wrote
            except PersistenceError as exc:
                raise StoreUnavailableError(one_line(exc)) from None
            return flags
        raise ConflictError(f"flags: {TRIES} conflicting writes in a row")
