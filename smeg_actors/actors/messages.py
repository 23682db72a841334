"""The messages actors exchange: commands are imperative, notifications past tense."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from domain.message import Message
from domain.ports import Delivery
from domain.request import SendRequest
from smeg_actors.runtime.tracing import NO_TRACE, Carrier


@dataclass(frozen=True, slots=True)
class WorkItem:
    """A message to attempt; ``message`` is the caller's up-to-date object, if it has one.

    ``trace``: the W3C trace context the attempt continues (its intake's span), while tracing is
    on; empty otherwise, and for retries (the worker remembers those: ``tracing.recall_retry``).
    """

    id: UUID
    message: Message | None = None
    trace: Carrier = NO_TRACE


@dataclass(frozen=True, slots=True)
class RequestsReceived:
    """A batch of validated send requests from the broker, not yet acked."""

    deliveries: tuple[Delivery, ...]


@dataclass(frozen=True, slots=True)
class DeliverMessages:
    """Messages that are due for an attempt now."""

    items: tuple[WorkItem, ...]


@dataclass(frozen=True, slots=True)
class DeliverBatch:
    """A worker's share: attempt each of these once."""

    items: tuple[WorkItem, ...]


@dataclass(frozen=True, slots=True)
class BatchFinished:
    """A worker is done with a batch (whatever each message's outcome)."""

    ids: tuple[UUID, ...]


@dataclass(frozen=True, slots=True)
class ScheduleRetry:
    """Release this message to the dispatcher at ``due``."""

    id: UUID
    due: datetime


@dataclass(frozen=True, slots=True)
class Recover:
    """Messages whose handling was cut short (a worker died): look at their state again."""

    ids: tuple[UUID, ...]


@dataclass(frozen=True, slots=True)
class PublishFailed:
    """A message failed for good: put its request on the failed queue."""

    request: SendRequest
    headers: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class ProviderRecovered:
    """A provider delivered again; exhausted failures through it may be redriven."""

    provider: str


@dataclass(frozen=True, slots=True)
class Tick:
    """Time passed: do periodic work (timers, sweeps, heartbeats)."""


@dataclass(frozen=True, slots=True)
class ChildFailed:
    """A supervised actor died; ``orphans`` were told to it and never handled (for its successor)."""

    name: str
    error: str
    orphans: tuple[Any, ...] = ()


# Queries and commands of the runtime (and of tests) to one actor, answered through ``ask``.


@dataclass(frozen=True, slots=True)
class GetCounts:
    """Answered with the actor's counters: restarts per child (supervisor), requests (intake)."""


@dataclass(frozen=True, slots=True)
class GetPending:
    """Answered with how many retries the scheduler holds."""


@dataclass(frozen=True, slots=True)
class GetPositions:
    """Answered with each read model's position in the log."""


@dataclass(frozen=True, slots=True)
class GetPublished:
    """Answered with how many entries an outbox actor published."""


@dataclass(frozen=True, slots=True)
class GetParked:
    """Answered with how many entries an outbox actor parked."""


@dataclass(frozen=True, slots=True)
class GetRedriven:
    """Answered with how many messages the automatic redriver gave a fresh cycle."""


@dataclass(frozen=True, slots=True)
class GetPid:
    """Answered with the process id of the child process an actor runs, if any."""


@dataclass(frozen=True, slots=True)
class IsIdle:
    """Answered True when no message is queued or being attempted."""


@dataclass(frozen=True, slots=True)
class Drain:
    """Stop handing out queued work: the process is stopping."""


@dataclass(frozen=True, slots=True)
class StopChildren:
    """Stop every child, workers last, and restart none of them."""


@dataclass(frozen=True, slots=True)
class AwaitReady:
    """Answered True once the actor's child process said it is ready, False after ``timeout`` s."""

    timeout: float
