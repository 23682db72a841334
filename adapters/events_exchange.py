"""Publication of every lifecycle event to the ``{prefix}.events`` topic exchange (an outbox).

A tracked follower of the event log: it reads events after its position, publishes them in store
order (routing key ``message.<event>``, e.g. ``message.delivered``) in one AMQP transaction per batch,
and only then advances its position. A crash between the two repeats a batch: at-least-once, with a
stable AMQP ``message_id`` (``<aggregate id>:<version>``) for consumers to drop duplicates.
Bodies never leave smeg, recipients and senders are masked, and of the metadata only its keys are
published (its values are the client's own data).

An event that cannot be published (its data will not encode) is parked (``parked_events``, with
the position that moves past it) and the rest of its batch is published: pika encodes a message
whole before it sends any of it, so a failed publish leaves nothing of it on the channel. A
``correlation_id`` longer than an AMQP short string (255 UTF-8 bytes) is left out of the
properties; the body carries it whole.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any
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
from adapters.parked_events import Parked, client_message_id, is_poison, log_parked, park, record_parked
from adapters.projections import advance_tracking, create_tables, read_position
from adapters.rabbitmq import BrokerUnavailableError, Topology, connect, describe_error, short_string
from domain.audit import public_record
from domain.message import Message
from domain.request import mask_address

log = structlog.get_logger(__name__)

TRACKING_NAME = "events_exchange"


def published_record(event: DomainEvent) -> dict[str, Any]:
    """What the exchange publishes of an event: ``public_record`` (no body, recipient masked),
    with the sender masked too and the metadata's keys only, as ``metadata_keys``."""
    record = public_record(event)
    if record.get("from") is not None:
        record["from"] = mask_address(record["from"])
    if "metadata" in record:
        record["metadata_keys"] = sorted(record.pop("metadata") or ())
    return record


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
        #: Events this publisher parked (this process).
        self.parked = 0
        create_tables(engine)

    def position(self) -> int:
        with self.engine.connect() as connection:
            return read_position(connection, TRACKING_NAME)

    def publish_pending(self) -> int:
        """Publish one batch after the tracked position; return how many events it held.

        An event whose publication fails on its data is parked; any other failure (the broker,
        the store) drops the channel's transaction and is raised, and the batch is tried again.
        """
        start = self.position()
        entries, end = self.store.read_events(start, self.batch)
        if end == start:
            return 0
        channel = self._channel()
        parked: list[Parked] = []
        try:
            for position, event in entries:
                try:
                    self._publish(channel, event)
                except Exception as exc:
                    if not is_poison(exc):
                        raise
                    parked.append(park(TRACKING_NAME, position, event, exc, self._known_id(event)))
            channel.tx_commit()
        except pika.exceptions.AMQPError as exc:
            self.close()
            raise BrokerUnavailableError(describe_error(exc)) from None
        except BaseException:
            self.close()  # its transaction holds part of the batch: never commit that later
            raise
        self._advance(start, end, parked)
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
        record = published_record(event)
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
                correlation_id=short_string(record.get("correlation_id")),
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

    def _known_id(self, event: DomainEvent) -> str | None:
        """The client's message id for a parked row, without failing again."""
        return self.names.get(event.originator_id) or client_message_id(self.store, event)

    def _advance(self, start: int, end: int, parked: list[Parked]) -> None:
        """Move the position past the batch, recording its parked events in the same transaction."""
        try:
            with self.engine.begin() as connection:
                if not advance_tracking(connection, TRACKING_NAME, start, end):
                    log.info("events_batch_published_by_another_node", position=start)
                    return
                record_parked(connection, parked)
        except IntegrityError:
            log.info("events_batch_published_by_another_node", position=start)
            return
        self.parked += len(parked)
        log_parked(parked)

    def _channel(self) -> BlockingChannel:
        if self.channel is None or not self.channel.is_open:
            self.close()
            self.connection = connect(self.url, name="smeg-events")
            self.channel = self.connection.channel()
            self.topology.declare(self.channel)
            self.channel.tx_select()
        return self.channel
