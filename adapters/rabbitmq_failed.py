"""The failed queue: where messages that failed for good are published, and read back for redrive."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pika
import pika.exceptions
import structlog
from pika.adapters.blocking_connection import BlockingChannel

from adapters.rabbitmq import (
    QUEUE_ARGUMENTS,
    BrokerUnavailableError,
    Topology,
    connect,
    describe_error,
    publish_confirmed,
)
from domain.request import SendRequest

log = structlog.get_logger(__name__)


class RabbitFailurePublisher:
    """Publishes failed requests to ``{prefix}.failed`` with confirms, on a connection of its own.

    Not thread-safe: one owner (the publisher actor) calls it; ``keep_alive`` services heartbeats.
    """

    def __init__(self, url: str, topology: Topology, *, heartbeat: int = 30) -> None:
        self.url, self.topology, self.heartbeat = url, topology, heartbeat
        self._connection: pika.BlockingConnection | None = None
        self._channel: BlockingChannel | None = None

    def publish_failed(self, request: SendRequest, headers: dict[str, str]) -> None:
        channel = self._ensure_channel()
        try:
            publish_confirmed(
                channel,
                self.topology.failed,
                request.to_json(),
                headers=headers,
                correlation_id=request.correlation_id,
                message_id=request.message_id,
            )
        except pika.exceptions.AMQPError as exc:
            self.close()
            raise BrokerUnavailableError(describe_error(exc)) from None

    def keep_alive(self) -> None:
        """Let pika answer heartbeats on an otherwise idle connection."""
        if self._connection is not None and self._connection.is_open:
            try:
                self._connection.process_data_events(time_limit=0)
            except pika.exceptions.AMQPError as exc:
                log.warning("publisher_connection_lost", error=describe_error(exc))
                self.close()

    def close(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None and connection.is_open:
            try:
                connection.close()
            except Exception as exc:
                log.debug("publisher_close_failed", error=describe_error(exc))

    def _ensure_channel(self) -> BlockingChannel:
        if self._channel is None or not self._channel.is_open:
            self.close()
            self._connection = connect(self.url, heartbeat=self.heartbeat, name="smeg-publisher")
            self._channel = self._connection.channel()
            self._channel.confirm_delivery()
        return self._channel


@dataclass(frozen=True)
class FailedEntry:
    """One message taken from the failed queue."""

    tag: int
    body: bytes
    headers: dict[str, Any]
    correlation_id: str | None


class FailedQueueReader:
    """Takes messages off ``{prefix}.failed`` one at a time (for redrive); one owning thread."""

    def __init__(self, url: str, topology: Topology, *, heartbeat: int = 30) -> None:
        self.topology = topology
        self.connection = connect(url, heartbeat=heartbeat, name="smeg-redrive")
        self.channel = self.connection.channel()
        topology.declare(self.channel)
        self.channel.confirm_delivery()

    def depth(self) -> int:
        """Messages waiting in the failed queue now."""
        result = self.channel.queue_declare(
            self.topology.failed, durable=True, arguments=QUEUE_ARGUMENTS, passive=True
        )
        return int(result.method.message_count)

    def get(self) -> FailedEntry | None:
        method, properties, body = self.channel.basic_get(self.topology.failed, auto_ack=False)
        if method is None:
            return None
        return FailedEntry(
            tag=method.delivery_tag,
            body=body,
            headers=dict(properties.headers or {}),
            correlation_id=properties.correlation_id,
        )

    def ack(self, entry: FailedEntry) -> None:
        self.channel.basic_ack(entry.tag)

    def requeue_at_tail(self, entry: FailedEntry) -> None:
        """Keep a message for operators, behind the others: republish (confirmed), then ack."""
        publish_confirmed(
            self.channel,
            self.topology.failed,
            entry.body,
            headers=entry.headers,
            correlation_id=entry.correlation_id,
        )
        self.channel.basic_ack(entry.tag)

    def close(self) -> None:
        """Close; anything taken and not acked goes back to the queue."""
        if self.connection.is_open:
            try:
                self.connection.close()
            except Exception as exc:
                log.debug("redrive_close_failed", error=describe_error(exc))
