"""Ports: the small interfaces the actors need from the outside world, and the errors that cross them.

Adapters implement these; actors depend only on them.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, TypeVar
from uuid import UUID

from domain.alert import Alert
from domain.errors import DomainError
from domain.flags import Flags
from domain.message import Message
from domain.provider_health import ProviderHealth
from domain.request import SendRequest

#: Rows of the unfinished-messages index read per query when the scheduler adopts them.
UNFINISHED_PAGE = 50_000


class StoreError(Exception):
    """The event store failed; the message says why in one line."""


class StoreUnavailableError(StoreError):
    """The store could not be reached or did not answer in time (worth retrying)."""


class MessageNotFoundError(StoreError):
    """No message has that id."""


class ConflictError(StoreError):
    """Another writer appended to the same aggregate first (optimistic concurrency)."""


@dataclass
class Change:
    """One replayable change of one aggregate: ``load`` builds it afresh, ``apply`` changes it.

    ``cached`` is the caller's up-to-date object, used on the first try only; any failed save
    drops it, so a retry always reloads and re-decides (a failed ``save()`` retried on the same
    objects writes nothing: library-notes G1).
    """

    load: Callable[[], Message]
    apply: Callable[[Message], None] = field(default=lambda _m: None)
    cached: Message | None = None


@dataclass
class Outcome:
    """What happened to one change: saved (with the new state), conflict, or refused by the domain."""

    message: Message | None = None
    conflict: bool = False
    refused: DomainError | None = None
    missing: bool = False
    error: Exception | None = None

    @property
    def saved(self) -> bool:
        return self.message is not None


class MessageRepository(Protocol):
    """What the actors need of the event store: load, save changes, read a history."""

    def get(self, aggregate_id: UUID) -> Message:
        """The message as of its last event, or raise MessageNotFoundError."""
        ...

    def commit(self, changes: Sequence[Change]) -> list[Outcome]:
        """Apply and save each change (one transaction where the store can); one outcome each."""
        ...

    def update(self, aggregate_id: UUID, apply: Callable[[Message], None]) -> Outcome:
        """Load, apply and save one message, reloading on a conflict."""
        ...

    def history(self, aggregate_id: UUID) -> list[Any]:
        """Every event of one message, oldest first."""
        ...


class ProviderHealthRepository(Protocol):
    """Providers' health in the event store: every transition is an event all processes read."""

    def get(self, name: str) -> ProviderHealth | None:
        """The provider's health as last recorded; None if nothing was ever recorded for it."""
        ...

    def change(self, name: str, apply: Callable[[ProviderHealth], None], *, now: datetime) -> ProviderHealth:
        """Load (registering the provider the first time), apply and save; on a conflict with
        another writer, reload and apply again. A ``DomainError`` from ``apply`` (e.g. the circuit
        another process just opened) propagates, and nothing is written."""
        ...


@dataclass(frozen=True, slots=True)
class Hold:
    """Why attempts through a provider wait, and until when to look again."""

    until: datetime
    reason: str
    #: Waiting for a slot of the provider's pace, not for its health: no reason to move elsewhere.
    paced: bool = False


@dataclass(frozen=True, slots=True)
class Trial:
    """Attempt it as a half-open circuit's trial: a real attempt that the cycle does not count."""


class ProviderGate(Protocol):
    """Whether a provider takes attempts now (what the workers obey), and what they saw of it."""

    def admit(self, provider: str, now: datetime, key: Hashable | None = None) -> Hold | Trial | None:
        """None: attempt; ``Trial``: attempt as a trial; ``Hold``: wait (thread-safe, no I/O).
        ``key`` (the message) keeps its place in the provider's pace while it waits."""
        ...

    def record(
        self,
        provider: str,
        *,
        transient: bool,
        trial: bool,
        now: datetime,
        status_code: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        """An attempt's outcome (``transient``: a failure worth retrying, timeouts included);
        this process's counts decide the circuit's transitions, written to the store. A 429
        slows the provider's pace instead (``retry_after``: its hint)."""
        ...


class FlagRepository(Protocol):
    """The deployment's flags in the event store (``domain.flags``), read by every process."""

    def get(self) -> Flags | None:
        """The flags as last recorded; None before the first is set."""
        ...

    def change(self, apply: Callable[[Flags], None], *, now: datetime) -> Flags:
        """Load (starting them the first time), apply and save; another writer's change first:
        reloaded and applied again. A ``ValueError`` from ``apply`` propagates, nothing written."""
        ...


class AlertRepository(Protocol):
    """Alerts in the event store: one per rule and key, every transition an event."""

    def get(self, rule: str, key: str) -> Alert | None:
        """The alert as last recorded; None if it never was."""
        ...

    def change(
        self, rule: str, key: str, apply: Callable[[Alert], bool], *, now: datetime
    ) -> tuple[Alert, bool]:
        """Load (or open), apply, save if ``apply`` recorded something; whether it did (another
        writer's change first: reloaded and applied again)."""
        ...

    def opened(self) -> list[tuple[str, str]]:
        """Every (rule, key) an alert was ever opened for."""
        ...


class AlertSink(Protocol):
    """Where a firing or resolved alert is told (the log, a webhook, Alertmanager)."""

    name: str

    def notify(self, alert: Alert) -> None:
        """Tell of the alert's latest state; raise to report a failure (it is recorded)."""
        ...


class Peers(Protocol):
    """The live delivery processes of the deployment, which share each provider's rate limit."""

    def beat(self, process: str, now: datetime) -> int:
        """Record ``process`` alive now; how many are (itself included)."""
        ...

    def leave(self, process: str) -> None:
        """``process`` stops: count it out at once."""
        ...


class UnfinishedMessages(Protocol):
    """The index of messages not yet Delivered or Failed, with when each is due for a look."""

    def __call__(
        self, *, stale_after: float, before: datetime | None = None, page_size: int = UNFINISHED_PAGE
    ) -> Iterator[list[tuple[UUID, datetime]]]:
        """Every one of them (due before ``before``, if given), page by page."""
        ...


class RequestedRetries(Protocol):
    """Retries people asked for that no process has attempted yet, oldest first."""

    def __call__(self, after: tuple[datetime, UUID] | None) -> list[tuple[UUID, datetime]]:
        """Those asked for after the one ``after`` (``(when, id)``; all, with None): ``(id, when)``."""
        ...


class LogOutbox(Protocol):
    """Publishes what the event log holds for the broker (failures, lifecycle events), in order.

    ``parked`` counts entries set aside because of their own data (this process).
    """

    parked: int

    def publish_pending(self) -> int:
        """Publish the next batch; how many entries it settled (0: nothing pending)."""
        ...

    def keep_alive(self) -> None:
        """Service the broker connection's heartbeats (its owner's thread)."""
        ...

    def close(self) -> None: ...


class ReadModels(Protocol):
    """The read models the projector keeps in step with the log."""

    def catch_up(self) -> dict[str, int]:
        """Apply every event not yet applied; events applied per read model."""
        ...

    def step(self) -> int:
        """Apply one batch to all of them together; events applied (0 once nothing is left)."""
        ...

    def positions(self) -> dict[str, int]: ...


class FailedEntry(Protocol):
    """One message taken from the failed queue, unsettled until acked, kept or republished."""

    @property
    def body(self) -> bytes: ...

    @property
    def headers(self) -> Mapping[str, Any]: ...

    @property
    def correlation_id(self) -> str | None: ...


E = TypeVar("E", bound=FailedEntry)


class FailedQueue(Protocol[E]):
    """The dead-letter queue as redrive reads it: one entry at a time, each settled explicitly."""

    def depth(self) -> int: ...

    def get(self) -> E | None: ...

    def ack(self, entry: E) -> None:
        """Done with it: it leaves the queue."""
        ...

    def keep(self, entry: E) -> None:
        """Hand it back for an operator (not seen again by this run)."""
        ...

    def republish(self, entry: E, *, headers: dict[str, Any] | None = None) -> None:
        """Put it back at the tail, with extra headers."""
        ...

    def release(self) -> None:
        """Hand back whatever this run still holds."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class OutboundMessage:
    """What a provider needs to deliver one message (the idempotency key is ``message_id``)."""

    message_id: str
    channel: str
    to: str
    sender: str | None
    body: str
    correlation_id: str


@dataclass(frozen=True, slots=True)
class ProviderReceipt:
    """A provider accepted the message."""

    provider_message_id: str


class DeliveryError(Exception):
    """A provider did not accept the message."""

    def __init__(self, reason: str, *, status_code: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status_code = status_code


class TransientDeliveryError(DeliveryError):
    """Worth retrying later (timeouts, 5xx, 429 …); ``retry_after`` is the provider's hint in seconds."""

    def __init__(
        self,
        reason: str,
        *,
        status_code: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(reason, status_code=status_code)
        self.retry_after = retry_after


class PermanentDeliveryError(DeliveryError):
    """Retrying cannot help (invalid number, rejected content, bad credentials …)."""


class ProviderUnhealthyError(Exception):
    """A provider's health probe failed; the message says why."""


class Provider(Protocol):
    """Delivers one message through a third party.

    ``send`` is a coroutine: every call of a process runs on one event loop, so thousands may be
    in flight without a thread each. It must never block that loop.
    """

    name: str

    async def send(self, message: OutboundMessage) -> ProviderReceipt:
        """Deliver or raise TransientDeliveryError / PermanentDeliveryError."""
        ...

    def check_health(self) -> None:
        """Return if the provider looks reachable, else raise ProviderUnhealthyError (blocking;
        called at start-up and by ``smeg check``, never on the calls' loop)."""
        ...

    async def aclose(self) -> None:
        """Release what ``send`` opened (on the loop the calls ran on)."""
        ...


@dataclass(frozen=True, slots=True)
class Delivery:
    """A validated send request handed over by the broker, acked by ``tag`` once durable."""

    tag: int
    request: SendRequest


class Intake(Protocol):
    """Where send requests come from (RabbitMQ, or in memory for the demo)."""

    #: Backpressure: while it returns True, the intake hands over no more deliveries.
    hold: Callable[[], bool]

    def start(
        self,
        on_batch: Callable[[list[Delivery]], None],
        on_lost: Callable[[str], None],
    ) -> None:
        """Begin consuming; invalid payloads are rejected by the intake itself."""
        ...

    def ack(self, tags: Sequence[int]) -> None:
        """Acknowledge deliveries (thread-safe): their Received events are durable."""
        ...

    def release(self, tags: Sequence[int]) -> None:
        """Hand deliveries back to the broker unprocessed (thread-safe), e.g. after a crash."""
        ...

    def stop(self) -> None:
        """Stop consuming; unacked deliveries go back to the broker."""
        ...


class FailurePublisher(Protocol):
    """Where messages that failed for good are published (the dead-letter queue)."""

    def publish_failed(self, request: SendRequest, headers: dict[str, str]) -> None:
        """Publish with confirmation, or raise."""
        ...
