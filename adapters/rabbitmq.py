"""RabbitMQ through pika: the topology, connections, and confirmed publishing.

The consumer thread is in ``rabbitmq_intake``, the failed queue in ``rabbitmq_failed``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pika
import pika.exceptions
import structlog
from pika.adapters.blocking_connection import BlockingChannel

log = structlog.get_logger(__name__)

#: Arguments of every queue smeg declares; other clients must declare them identically (or not at all).
QUEUE_ARGUMENTS: dict[str, Any] = {"x-queue-type": "quorum"}


class BrokerUnavailableError(Exception):
    """The broker could not be reached or refused us; the message says why in one line."""


@dataclass(frozen=True)
class Topology:
    """The names of everything smeg declares, from ``SMEG_QUEUE_PREFIX``."""

    prefix: str = "smeg"

    @property
    def send(self) -> str:
        return f"{self.prefix}.send"

    @property
    def failed(self) -> str:
        return f"{self.prefix}.failed"

    @property
    def rejected(self) -> str:
        return f"{self.prefix}.rejected"

    @property
    def events(self) -> str:
        return f"{self.prefix}.events"

    def declare(self, channel: BlockingChannel) -> None:
        """Declare the durable queues and the events exchange (idempotent)."""
        for queue in (self.send, self.failed, self.rejected):
            channel.queue_declare(queue, durable=True, arguments=QUEUE_ARGUMENTS)
        channel.exchange_declare(self.events, exchange_type="topic", durable=True)


def connect(url: str, *, heartbeat: int | None = None, name: str = "smeg") -> pika.BlockingConnection:
    """A blocking connection with a heartbeat and bounded connect/blocked timeouts."""
    params = pika.URLParameters(url)
    if heartbeat is not None:
        params.heartbeat = heartbeat
    params.blocked_connection_timeout = 60
    params.socket_timeout = 5
    params.connection_attempts = 1
    params.client_properties = {"connection_name": name}
    try:
        return pika.BlockingConnection(params)
    except (pika.exceptions.AMQPError, OSError) as exc:
        raise BrokerUnavailableError(describe_error(exc)) from None


def describe_error(exc: BaseException) -> str:
    """One line for a pika error (its repr is often empty or nested)."""
    text = str(exc).strip().replace("\n", " ")
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def check_broker(url: str, topology: Topology) -> None:
    """Connect and declare the topology; raise BrokerUnavailableError if that fails."""
    connection = connect(url, name="smeg-check")
    try:
        topology.declare(connection.channel())
    except pika.exceptions.AMQPError as exc:
        raise BrokerUnavailableError(describe_error(exc)) from None
    finally:
        if connection.is_open:
            connection.close()


def publish_confirmed(
    channel: BlockingChannel,
    queue: str,
    body: bytes,
    *,
    headers: dict[str, Any] | None = None,
    correlation_id: str | None = None,
    message_id: str | None = None,
) -> None:
    """Publish a persistent message through the default exchange; return once the broker confirmed."""
    properties = pika.BasicProperties(
        delivery_mode=pika.DeliveryMode.Persistent,
        content_type="application/json",
        headers=headers or None,
        correlation_id=correlation_id,
        message_id=message_id,
    )
    channel.basic_publish("", queue, body, properties, mandatory=True)
