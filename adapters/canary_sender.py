"""Publishes the canary's synthetic requests to smeg's own send queue, as a client would (a
persistent message, confirmed by the broker), over a connection of its own."""

from __future__ import annotations

import pika
import pika.exceptions

from adapters.rabbitmq import BrokerUnavailableError, Topology, connect, describe_error
from domain.request import SendRequest


class CanarySender:
    """One connection, opened for each canary and closed after it (one a minute: a kept one
    would need heartbeats between canaries that nothing here would serve)."""

    def __init__(self, url: str, topology: Topology) -> None:
        self.url, self.topology = url, topology

    def send(self, request: SendRequest) -> None:
        """Raises BrokerUnavailableError (the canary counts a canary not sent as a miss)."""
        connection = None
        try:
            connection = connect(self.url, name="smeg-canary")
            channel = connection.channel()
            channel.confirm_delivery()
            properties = pika.BasicProperties(
                delivery_mode=2, content_type="application/json", correlation_id=request.correlation_id
            )
            channel.basic_publish("", self.topology.send, request.to_json(), properties, mandatory=True)
        except (pika.exceptions.AMQPError, OSError) as exc:
            raise BrokerUnavailableError(describe_error(exc)) from None
        finally:
            if connection is not None and connection.is_open:
                try:
                    connection.close()
                except Exception:  # closing a broken connection: nothing more to do
                    pass
