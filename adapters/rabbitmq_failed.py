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


#: Headers the broker sets on a delivery; a republished copy is a new message and must not carry them.
_BROKER_HEADERS = ("x-delivery-count", "x-acquired-count")


@dataclass(frozen=True)
class FailedEntry:
    """One message taken from the failed queue."""

    tag: int
    body: bytes
    headers: dict[str, Any]
    correlation_id: str | None
    message_id: str | None = None

    @property
    def returns(self) -> int:
        """How often the broker has handed this entry out and had it back (quorum queues say so)."""
        counts = [self.headers.get(name) for name in _BROKER_HEADERS]
        return max((int(c) for c in counts if isinstance(c, int)), default=0)


class FailedQueueReader:
    """Takes messages off ``{prefix}.failed`` one at a time (for redrive); one owning thread.

    An entry is acked (done with), republished (a new copy at the tail), or kept: held unacked
    until ``release`` (or ``close``) hands every kept entry back to the queue, the same message,
    not a copy, so a run sees each entry once and publishes none of those it keeps. (A quorum
    queue puts what is handed back behind the entries waiting, in the order handed back: RabbitMQ
    3.10 here.) Every return counts towards a quorum queue's delivery limit (up to RabbitMQ 4.2
    ``basic.nack`` counts too, and 4.x has a default limit of 20 past which the broker drops the
    entry), so an entry handed back ``republish_after`` times is republished instead, with a fresh
    count.
    """

    def __init__(
        self, url: str, topology: Topology, *, heartbeat: int = 30, republish_after: int = 10
    ) -> None:
        self.topology, self.republish_after = topology, republish_after
        self.connection = connect(url, heartbeat=heartbeat, name="smeg-redrive")
        self.channel = self.connection.channel()
        topology.declare(self.channel)
        self.channel.confirm_delivery()
        self._held = 0

    def depth(self) -> int:
        """Messages waiting in the failed queue now (not counting those this reader holds)."""
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
            message_id=properties.message_id,
        )

    def ack(self, entry: FailedEntry) -> None:
        self.channel.basic_ack(entry.tag)

    def keep(self, entry: FailedEntry) -> None:
        """Leave the entry on the queue (handed back by ``release``), unless it came back so
        often that a delivery limit could drop it: then republish it."""
        if entry.returns >= self.republish_after:
            self.republish(entry)
        else:
            self._held += 1

    def republish(self, entry: FailedEntry, *, headers: dict[str, Any] | None = None) -> None:
        """Move the entry to the tail: republish it (confirmed) with its AMQP message id,
        correlation id and headers (plus ``headers``), then ack the original."""
        kept = {k: v for k, v in entry.headers.items() if k not in _BROKER_HEADERS}
        publish_confirmed(
            self.channel,
            self.topology.failed,
            entry.body,
            headers=kept | (headers or {}),
            correlation_id=entry.correlation_id,
            message_id=entry.message_id,
        )
        self.channel.basic_ack(entry.tag)

    def release(self) -> None:
        """Hand every kept entry back to the queue. (On a lost connection the broker has them back.)"""
        held, self._held = self._held, 0
        if held and self.channel.is_open:
            try:
                self.channel.basic_nack(delivery_tag=0, multiple=True, requeue=True)
            except pika.exceptions.AMQPError as exc:
                log.debug("redrive_release_failed", error=describe_error(exc))

    def close(self) -> None:
        """Close; anything taken and not acked goes back to the queue."""
        if self.connection.is_open:
            try:
                self.connection.close()
            except Exception as exc:
                log.debug("redrive_close_failed", error=describe_error(exc))
