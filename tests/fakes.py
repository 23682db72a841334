"""Fakes for the ports (tests only): a scriptable provider, a clock the test moves, a crashing clock,
and an event store in memory (``InMemoryMessageStore``, held to the real one by
tests/integration/test_store_contract.py)."""

from __future__ import annotations

import functools
import threading
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any, Generic, TypeVar
from uuid import UUID

from eventsourcing.persistence import DatetimeAsISO, DecimalAsStr, Mapper, StoredEvent, UUIDAsHex

from adapters.event_log import FastJSONTranscoder
from adapters.event_store import EXTRA_TRANSCODINGS
from domain.alert import Alert
from domain.errors import DomainError
from domain.message import Message
from domain.ports import (
    Change,
    MessageNotFoundError,
    OutboundMessage,
    Outcome,
    PermanentDeliveryError,
    ProviderReceipt,
    StoreError,
    StoreUnavailableError,
    TransientDeliveryError,
)
from domain.provider_health import ProviderHealth

Script = list[str]  # "ok", "transient", "permanent", per attempt; the last entry repeats


class FakeProvider:
    """Delivers by script: ``scripts[message_id] = ["transient", "ok"]``; default ``ok``."""

    timeout = 1.0

    def __init__(self, name: str = "fake", scripts: dict[str, Script] | None = None) -> None:
        self.name = name
        self.scripts = scripts or {}
        self.calls: Counter[str] = Counter()
        self.keys: dict[str, list[str]] = defaultdict(list)
        self.delivered = threading.Event()
        self._lock = threading.Lock()
        self.healthy = True
        #: While True every call fails transiently (an outage), counted like any other.
        self.down = False

    async def send(self, message: OutboundMessage) -> ProviderReceipt:
        return self.answer(message)

    def answer(self, message: OutboundMessage) -> ProviderReceipt:
        with self._lock:
            n = self.calls[message.message_id]
            self.calls[message.message_id] += 1
            self.keys[message.message_id].append(message.message_id)
        if self.down:
            raise TransientDeliveryError("http 503 (outage)", status_code=503)
        script = self.scripts.get(message.message_id, ["ok"])
        step = script[min(n, len(script) - 1)]
        if step == "transient":
            raise TransientDeliveryError("http 503", status_code=503)
        if step == "permanent":
            raise PermanentDeliveryError("http 400", status_code=400)
        if step == "crash":
            raise RuntimeError("provider bug")
        return ProviderReceipt(f"fake-{message.message_id}-{n + 1}")

    def check_health(self) -> None:
        if not self.healthy:
            from domain.ports import ProviderUnhealthyError

            raise ProviderUnhealthyError("fake provider is down")

    async def aclose(self) -> None:
        pass


class CrashingClock:
    """UTC now, except that it raises on the calls ``should_crash`` picks (crashes an actor)."""

    def __init__(self, should_crash: Callable[[], bool]) -> None:
        self.should_crash = should_crash

    def __call__(self) -> datetime:
        if self.should_crash():
            raise RuntimeError("injected crash")
        return datetime.now(timezone.utc)


Now = TypeVar("Now", float, datetime)


class FakeClock(Generic[Now]):
    """Now (a monotonic float or a UTC datetime), moved only by the test: never freezegun around
    actors (library-notes G3). ``sleep`` records the wait and moves the clock by it."""

    def __init__(self, now: Now) -> None:
        self.now: Now = now
        self.sleeps: list[float] = []

    def __call__(self) -> Now:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        if isinstance(self.now, datetime):
            self.now = self.now + timedelta(seconds=seconds)
        else:
            self.now = self.now + seconds


class _Conflict(Exception):
    """A version already taken (the real store's IntegrityError)."""


class InMemoryMessageStore:
    """``MessageRepository`` in memory, behaving as ``adapters.event_store.MessageStore`` does.

    Events are kept encoded, per aggregate and version, with the store's own transcoder: ``get``
    and ``history`` decode them afresh, so no two calls share an object, and an event the real
    store could not encode fails here too. ``commit`` follows ``MessageStore.commit`` step by step:
    each change is applied on the caller's thread (its cached object first, once: the cache is
    dropped whatever happens), a batch is written all or nothing, a taken version bisects the
    batch with every aggregate reloaded (library-notes G1), and a single change is reloaded once
    before it counts as a conflict.

    Test knobs: ``fail_next(n)`` (the next ``n`` commits fail as an outage would) and ``commits``
    (how many times ``commit`` was called, failed calls included).
    """

    def __init__(self) -> None:
        self._events: dict[UUID | str, dict[int, StoredEvent]] = {}
        self._lock = threading.RLock()
        transcoder = FastJSONTranscoder()
        for transcoding in (UUIDAsHex(), DecimalAsStr(), DatetimeAsISO(), *EXTRA_TRANSCODINGS):
            transcoder.register(transcoding)
        self._mapper: Mapper[UUID] = Mapper(transcoder=transcoder)
        self._failures = 0
        self.commits = 0

    def fail_next(self, n: int = 1) -> None:
        """The next ``n`` commits raise StoreUnavailableError after applying their changes (so,
        as after a real failed write, their cached objects are spent and a retry reloads)."""
        with self._lock:
            self._failures = n

    def get(self, aggregate_id: UUID) -> Message:
        """The message rebuilt from its events, or MessageNotFoundError."""
        events = self.history(aggregate_id)
        if not events:
            raise MessageNotFoundError(f"no message {aggregate_id}")
        message: Any = None
        for event in events:
            message = event.mutate(message)
        assert isinstance(message, Message)
        return message

    def history(self, aggregate_id: UUID) -> list[Any]:
        """Every event of one message, oldest first (decoded afresh; [] for an unknown id)."""
        with self._lock:
            stored = sorted(self._events.get(aggregate_id, {}).items())
        return [self._mapper.to_domain_event(record) for _version, record in stored]

    def commit(self, changes: Sequence[Change]) -> list[Outcome]:
        """Apply and save every change in one transaction; after a conflict, bisect (reloading)."""
        with self._lock:
            self.commits += 1
        decided = self._decide(changes)
        try:
            with self._lock:
                if self._failures:
                    self._failures -= 1
                    raise StoreUnavailableError("injected outage (InMemoryMessageStore.fail_next)")
                outcomes = self._write_decided(decided)
        finally:
            for change in changes:
                change.cached = None
        for outcome in outcomes:
            if outcome.error is not None:
                raise outcome.error
        return outcomes

    def update(self, aggregate_id: UUID, apply: Callable[[Message], None]) -> Outcome:
        """Load, apply and save one message, reloading once if another writer got there first."""
        change = Change(load=lambda: self.get(aggregate_id), apply=apply)
        outcome = self.commit([change])[0]
        if outcome.conflict:
            outcome = self.commit([change])[0]
        if outcome.missing:
            raise MessageNotFoundError(f"no message {aggregate_id}")
        return outcome

    def _decide(self, changes: Sequence[Change]) -> list[tuple[Change, Outcome, list[StoredEvent]]]:
        decided = []
        try:
            for change in changes:
                outcome = self._apply(change, use_cache=True)
                records = self._encode(outcome.message) if outcome.message is not None else []
                decided.append((change, outcome, records))
        finally:
            for change in changes:
                change.cached = None
        return decided

    def _write_decided(self, decided: Sequence[tuple[Change, Outcome, list[StoredEvent]]]) -> list[Outcome]:
        try:
            self._write([record for _change, _outcome, records in decided for record in records])
        except _Conflict:
            return self._after_conflict([change for change, _outcome, _records in decided], reloaded=False)
        return [outcome for _change, outcome, _records in decided]

    def _apply(self, change: Change, *, use_cache: bool) -> Outcome:
        try:
            message = change.cached if use_cache and change.cached else change.load()
            change.apply(message)
        except MessageNotFoundError:
            return Outcome(missing=True)
        except DomainError as exc:
            return Outcome(refused=exc)
        except StoreError:
            raise
        except Exception as exc:
            return Outcome(error=exc)
        return Outcome(message=message)

    def _attempt(self, changes: Sequence[Change], *, use_cache: bool) -> list[Outcome]:
        try:
            outcomes = [self._apply(change, use_cache=use_cache) for change in changes]
            messages = [outcome.message for outcome in outcomes if outcome.message is not None]
            self._write([record for message in messages for record in self._encode(message)])
            return outcomes
        except _Conflict:
            return self._after_conflict(changes, reloaded=not use_cache)

    def _after_conflict(self, changes: Sequence[Change], *, reloaded: bool) -> list[Outcome]:
        if len(changes) > 1:
            middle = len(changes) // 2
            return self._attempt(changes[:middle], use_cache=False) + self._attempt(
                changes[middle:], use_cache=False
            )
        if not reloaded:
            return self._attempt(changes, use_cache=False)
        return [Outcome(conflict=True)]

    def _encode(self, message: Message) -> list[StoredEvent]:
        """Drain the message's pending events, encoded (as ``save`` does, even if the write fails)."""
        return [self._mapper.to_stored_event(event) for event in message.collect_events()]

    def _write(self, records: Sequence[StoredEvent]) -> None:
        """All or nothing: _Conflict if any (aggregate, version) is taken, in the store or the batch."""
        with self._lock:
            seen: set[tuple[UUID | str, int]] = set()
            for record in records:
                key = (record.originator_id, record.originator_version)
                if key in seen or record.originator_version in self._events.get(key[0], {}):
                    raise _Conflict(key)
                seen.add(key)
            for record in records:
                self._events.setdefault(record.originator_id, {})[record.originator_version] = record


class InMemoryProviderHealth:
    """The ``ProviderHealthRepository`` port in memory: events kept per provider, optimistic
    concurrency on the version (a stale write reloads and decides again, as the real store does)."""

    def __init__(self) -> None:
        self.events: dict[str, list[Any]] = {}
        self.lock = threading.Lock()

    def get(self, name: str) -> ProviderHealth | None:
        with self.lock:
            events = list(self.events.get(name, []))
        if not events:
            return None
        health: ProviderHealth = functools.reduce(
            lambda aggregate, event: event.mutate(aggregate), events, None
        )
        return health

    def change(self, name: str, apply: Callable[[ProviderHealth], None], *, now: datetime) -> ProviderHealth:
        while True:
            health = self.get(name) or ProviderHealth.register(name, now=now)
            apply(health)
            new = health.collect_events()
            with self.lock:
                stored = self.events.setdefault(name, [])
                if new and new[0].originator_version != len(stored) + 1:
                    continue  # another writer took the version
                stored.extend(new)
            return health


class InMemoryAlerts:
    """The ``AlertRepository`` port in memory, with the real store's optimistic concurrency."""

    def __init__(self) -> None:
        self.events: dict[tuple[str, str], list[Any]] = {}
        self.lock = threading.Lock()

    def get(self, rule: str, key: str) -> Alert | None:
        with self.lock:
            events = list(self.events.get((rule, key), []))
        if not events:
            return None
        alert: Alert = functools.reduce(lambda aggregate, event: event.mutate(aggregate), events, None)
        return alert

    def change(
        self, rule: str, key: str, apply: Callable[[Alert], bool], *, now: datetime
    ) -> tuple[Alert, bool]:
        while True:
            alert = self.get(rule, key) or Alert.open(rule, key, now=now)
            if not apply(alert):
                return alert, False
            new = alert.collect_events()
            with self.lock:
                stored = self.events.setdefault((rule, key), [])
                if new and new[0].originator_version != len(stored) + 1:
                    continue
                stored.extend(new)
            return alert, True

    def opened(self) -> list[tuple[str, str]]:
        with self.lock:
            return list(self.events)

    def names(self, rule: str, key: str) -> list[str]:
        return [type(e).__name__ for e in self.events.get((rule, key), [])]
