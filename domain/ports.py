"""Ports: the small interfaces the actors need from the outside world, and the errors that cross them.

Adapters implement these; actors depend only on them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from domain.request import SendRequest


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
