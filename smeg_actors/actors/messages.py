"""The messages actors exchange: commands are imperative, notifications past tense."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from domain.message import Message
from domain.ports import Delivery
from domain.request import SendRequest


@dataclass(frozen=True, slots=True)
class WorkItem:
    """A message to attempt; ``message`` is the caller's up-to-date object, if it has one."""

    id: UUID
    message: Message | None = None


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
