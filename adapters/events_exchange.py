"""Publication of every lifecycle event to the ``{prefix}.events`` topic exchange (an outbox).

A tracked follower of the event log: it reads events after its position, publishes them in store
order (routing key ``message.<event>``, e.g. ``message.delivered``) in one AMQP transaction per batch,
and only then advances its position. A crash between the two repeats a batch: at-least-once, with a
stable AMQP ``message_id`` (``<aggregate id>:<version>``) for consumers to drop duplicates.
Bodies never leave smeg and recipients are masked.
"""

from __future__ import annotations

from collections import OrderedDict
from uuid import UUID

import orjson
import pika
import pika.exceptions
import structlog
from eventsourcing.domain import DomainEvent
from pika.adapters.blocking_connection import BlockingChannel
from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError

from adapters.event_store import MessageStore
from adapters.projections import advance_tracking, create_tables, read_position
from adapters.rabbitmq import BrokerUnavailableError, Topology, connect, describe_error
from domain.audit import public_record
from domain.message import Message

log = structlog.get_logger(__name__)

TRACKING_NAME = "events_exchange"


class EventsExchangePublisher:
    """Publishes new events; one owning thread (it holds a pika connection).

    Args:
        store: the event store to follow.
        engine: where the tracking row lives.
        url: AMQP URL.
        topology: exchange name.
        batch: events per AMQP transaction.
    """

    def __init__(
        self, store: MessageStore, engine: Engine, url: str, topology: Topology, *, batch: int = 500
    ) -> None:
        self.store, self.engine, self.url, self.topology, self.batch = store, engine, url, topology, batch
        self.names: OrderedDict[UUID, str] = OrderedDict()
        self.channel: BlockingChannel | None = None
        self.connection: pika.BlockingConnection | None = None
        create_tables(engine)

    def position(self) -> int:
        with self.engine.connect() as connection:
            return read_position(connection, TRACKING_NAME)

    def publish_pending(self) -> int:
        """Publish one batch after the tracked position; return how many events it held."""
        start = self.position()
        entries, end = self.store.read_events(start, self.batch)
        if end == start:
            return 0
        channel = self._channel()
        try:
            for _position, event in entries:
                self._publish(channel, event)
            channel.tx_commit()
        except pika.exceptions.AMQPError as exc:
            self.close()
            raise BrokerUnavailableError(describe_error(exc)) from None
        self._advance(start, end)
        return len(entries)

    def close(self) -> None:
        connection, self.connection, self.channel = self.connection, None, None
        if connection is not None and connection.is_open:
            try:
                connection.close()
            except Exception as exc:
                log.debug("events_connection_close_failed", error=describe_error(exc))

    def keep_alive(self) -> None:
        if self.connection is not None and self.connection.is_open:
            try:
                self.connection.process_data_events(time_limit=0)
            except pika.exceptions.AMQPError:
                self.close()

    def _publish(self, channel: BlockingChannel, event: DomainEvent) -> None:
        record = public_record(event)
        record["message_id"] = self._client_id(event)
        record["aggregate_id"] = str(event.originator_id)
        # The channel's own publish, without BlockingChannel's flush after every message: the
        # frames go out together with the transaction's commit (a large saving per event).
        channel._impl.basic_publish(
            self.topology.events,
            f"message.{record['type'].lower()}",
            orjson.dumps(record),
            pika.BasicProperties(
                delivery_mode=pika.DeliveryMode.Persistent,
                content_type="application/json",
                message_id=f"{event.originator_id}:{event.originator_version}",
                correlation_id=record.get("correlation_id"),
                type=record["type"],
            ),
        )

    def _client_id(self, event: DomainEvent) -> str:
        key = event.originator_id
        if isinstance(event, Message.Received):
            self.names[key] = event.message_id
        elif key not in self.names:
            self.names[key] = self.store.history_head(key).message_id
        self.names.move_to_end(key)
        while len(self.names) > 10_000:
            self.names.popitem(last=False)
        return self.names[key]

    def _advance(self, start: int, end: int) -> None:
        try:
            with self.engine.begin() as connection:
                if not advance_tracking(connection, TRACKING_NAME, start, end):
                    log.info("events_batch_published_by_another_node", position=start)
        except IntegrityError:
            log.info("events_batch_published_by_another_node", position=start)

    def _channel(self) -> BlockingChannel:
        if self.channel is None or not self.channel.is_open:
            self.close()
            self.connection = connect(self.url, name="smeg-events")
            self.channel = self.connection.channel()
            self.topology.declare(self.channel)
            self.channel.tx_select()
        return self.channel
