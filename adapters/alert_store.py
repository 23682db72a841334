"""Alert aggregates in the event store's own log, like providers' health: one row per transition,
every process's evaluator writing, the store's optimistic concurrency letting one of them win."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from eventsourcing.application import AggregateNotFoundError
from eventsourcing.persistence import IntegrityError, PersistenceError

from adapters.event_store import MessageStore
from adapters.store_connection import one_line
from domain.alert import Alert, AlertIndex
from domain.ports import ConflictError, StoreUnavailableError

#: Tries of one change before another writer's conflicting writes make it give up.
TRIES = 3


class AlertStore:
    """The ``AlertRepository`` port over a ``MessageStore``'s application."""

    def __init__(self, store: MessageStore) -> None:
        self.store, self.app = store, store.app

    def index(self) -> AlertIndex | None:
        """Every (rule, key) an alert was opened for; None before the first."""
        try:
            index: AlertIndex = self.app.repository.get(AlertIndex.create_id())
        except AggregateNotFoundError:
            return None
        except PersistenceError as exc:
            raise StoreUnavailableError(one_line(exc)) from None
        return index

    def opened(self) -> list[tuple[str, str]]:
        index = self.index()
        return list(index.keys) if index is not None else []

    def get(self, rule: str, key: str) -> Alert | None:
        try:
            alert: Alert = self.app.repository.get(Alert.create_id(rule, key))
        except AggregateNotFoundError:
            return None
        except PersistenceError as exc:
            raise StoreUnavailableError(one_line(exc)) from None
        return alert

    def change(
        self, rule: str, key: str, apply: Callable[[Alert], bool], *, now: datetime
    ) -> tuple[Alert, bool]:
        """Load (opening it the first time), apply, and save what ``apply`` recorded; whether
        this writer recorded a change (False: nothing to record, or another writer got there
        first and ``apply`` found nothing left to do on what it wrote)."""
        for _ in range(TRIES):
            known = self.get(rule, key)
            alert = known or Alert.open(rule, key, now=now)
            if not apply(alert):
                return alert, False
            index = None
            if known is None:  # a new alert: the index learns its key in the same write
                index = self.index() or AlertIndex.start(now=now)
                index.add(rule, key, now=now)
            try:
                self.app.save(alert, *([index] if index is not None else []))
            except IntegrityError:
                continue
            except PersistenceError as exc:
                raise StoreUnavailableError(one_line(exc)) from None
            return alert, True
        raise ConflictError(f"alert {rule}/{key}: {TRIES} conflicting writes in a row")
