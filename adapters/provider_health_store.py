"""ProviderHealth aggregates in the event store's own log: the same application and tables as
the messages, so a transition is one row every process and node reads in log order.

Writes are rare (a transition, an operator's switch) and go straight to the application, not
through the messages' group committer.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from eventsourcing.application import AggregateNotFoundError
from eventsourcing.persistence import IntegrityError, PersistenceError

from adapters.event_store import MessageStore
from adapters.store_connection import one_line
from domain.ports import ConflictError, StoreUnavailableError
from domain.provider_health import ProviderHealth

#: Tries of one change before another writer's conflicting writes make it give up.
TRIES = 3


class ProviderHealthStore:
    """The ``ProviderHealthRepository`` port over a ``MessageStore``'s application."""

    def __init__(self, store: MessageStore) -> None:
        self.app = store.app

    def get(self, name: str) -> ProviderHealth | None:
        try:
            health: ProviderHealth = self.app.repository.get(ProviderHealth.create_id(name))
        except AggregateNotFoundError:
            return None
        except PersistenceError as exc:
            raise StoreUnavailableError(one_line(exc)) from None
        return health

    def change(self, name: str, apply: Callable[[ProviderHealth], None], *, now: datetime) -> ProviderHealth:
        for _ in range(TRIES):
            health = self.get(name) or ProviderHealth.register(name, now=now)
            apply(health)
            try:
                self.app.save(health)
            except IntegrityError:
                continue  # another writer took the version: decide again on what it wrote
            except PersistenceError as exc:
                raise StoreUnavailableError(one_line(exc)) from None
            return health
        raise ConflictError(f"provider {name}: {TRIES} conflicting writes in a row")
