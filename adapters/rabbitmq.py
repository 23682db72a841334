"""RabbitMQ through pika: the topology, connections, and confirmed publishing.

The consumer thread is in ``rabbitmq_intake``, the failed queue in ``rabbitmq_failed``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import pika
import pika.exceptions
import structlog
from pika.adapters.blocking_connection import BlockingChannel

log = structlog.get_logger(__name__)

#: Arguments of every queue smeg declares; other clients must declare them identically (or not at all).
QUEUE_ARGUMENTS: dict[str, Any] = {"x-queue-type": "quorum"}

#: Deliveries of one message before the broker dead-letters it from the send queue. High enough
#: that restarts during an outage (each returns the unacked prefetch) never reach it; low enough
#: that a message which kills every consumer that reads it leaves in seconds.
DELIVERY_LIMIT = 20


def send_queue_arguments(rejected: str) -> dict[str, Any]:
    """The send queue's poison-message handling: after ``DELIVERY_LIMIT`` deliveries, or when
    smeg rejects a delivery it could not move itself, the broker moves it to ``rejected``."""
    return {
        **QUEUE_ARGUMENTS,
        "x-delivery-limit": DELIVERY_LIMIT,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": rejected,
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }


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

    def declare(self, channel: BlockingChannel) -> bool:
        """Declare the durable queues and the events exchange (idempotent).

        Returns whether the send queue has smeg's poison-message handling: a send queue
        declared before it existed cannot take new arguments (RabbitMQ refuses the declare), so
        it is used as it is, with a warning that says how to give it the same handling.
        """
        for queue in (self.rejected, self.failed):
            channel.queue_declare(queue, durable=True, arguments=QUEUE_ARGUMENTS)
        arguments = self._send_arguments(channel.connection)
        channel.queue_declare(self.send, durable=True, arguments=arguments)
        channel.exchange_declare(self.events, exchange_type="topic", durable=True)
        return arguments is not QUEUE_ARGUMENTS

    def poison_policy_command(self) -> str:
        """The command that gives a send queue of an older install the poison-message handling."""
        definition = {
            "delivery-limit": DELIVERY_LIMIT,
            "dead-letter-exchange": "",
            "dead-letter-routing-key": self.rejected,
            "dead-letter-strategy": "at-least-once",
            "overflow": "reject-publish",
        }
        pattern = "^" + re.escape(self.send) + "$"
        return (
            f"rabbitmqctl set_policy {self.prefix}-send-poison '{pattern}' "
            f"'{json.dumps(definition, separators=(',', ':'))}' --apply-to queues"
        )

    def _send_arguments(self, connection: Any) -> dict[str, Any]:
        """Probe the send queue on channels of its own (a refused declare closes its channel)."""
        arguments = send_queue_arguments(self.rejected)
        for candidate in (arguments, QUEUE_ARGUMENTS):
            probe = connection.channel()
            try:
                probe.queue_declare(self.send, durable=True, arguments=candidate)
            except pika.exceptions.ChannelClosedByBroker as exc:
                if exc.reply_code != 406:
                    raise
                continue
            probe.close()
            if candidate is QUEUE_ARGUMENTS:
                log.warning(
                    "send_queue_without_poison_handling",
                    queue=self.send,
                    fix=self.poison_policy_command(),
                )
            return candidate
        raise BrokerUnavailableError(
            f"queue {self.send} exists with arguments smeg does not declare (not a quorum queue?):"
            f" move its messages and delete it, then start smeg to declare it"
        )


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
        raise BrokerUnavailableError(
            f"RabbitMQ at {params.host}:{params.port}: {describe_error(exc)}"
        ) from None


def describe_error(exc: BaseException) -> str:
    """One line for a pika error (its repr is often empty or nested: a failed connect holds its
    cause, such as ``ConnectionRefusedError``, as its only argument)."""
    text = str(exc).strip().replace("\n", " ")
    if not text and exc.args:
        text = " ".join(repr(arg) if isinstance(arg, BaseException) else str(arg) for arg in exc.args)
        text = text.strip().replace("\n", " ")
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def check_broker(url: str, topology: Topology) -> bool:
    """Connect and declare the topology; raise BrokerUnavailableError if that fails. Returns
    whether the send queue has the poison-message handling (see ``Topology.declare``)."""
    connection = connect(url, name="smeg-check")
    try:
        return topology.declare(connection.channel())
    except pika.exceptions.AMQPError as exc:
        raise BrokerUnavailableError(describe_error(exc)) from None
    finally:
        if connection.is_open:
            connection.close()


#: AMQP short strings (correlation_id, message_id …) hold at most this many bytes.
SHORT_STRING_BYTES = 255


def short_string(value: object) -> str | None:
    """``value`` if it can travel as an AMQP short string, else None (pika would refuse the
    whole message; the body carries the value whole)."""
    if not isinstance(value, str):
        return None
    if len(value) * 4 <= SHORT_STRING_BYTES:
        return value
    return value if len(value.encode("utf-8", "surrogatepass")) <= SHORT_STRING_BYTES else None


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
        correlation_id=short_string(correlation_id),
        message_id=short_string(message_id),
    )
    channel.basic_publish("", queue, body, properties, mandatory=True)
