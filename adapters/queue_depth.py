"""How many messages wait in smeg's queues, read without side effects (passive declares: a queue
that does not exist is not created, and reads as absent)."""

from __future__ import annotations

import pika
import pika.exceptions

from adapters.rabbitmq import BrokerUnavailableError, Topology, connect, describe_error


class QueueDepths:
    """One connection, kept open between reads; reopened after a failure."""

    def __init__(self, url: str, topology: Topology) -> None:
        self.url, self.topology = url, topology
        self.connection: pika.BlockingConnection | None = None

    def read(self) -> dict[str, int]:
        """Ready messages by queue role (send, failed, rejected); raises BrokerUnavailableError."""
        try:
            if self.connection is None or not self.connection.is_open:
                self.connection = connect(self.url, name="smeg-queue-depth")
            depths = {}
            for role, name in (
                ("send", self.topology.send),
                ("failed", self.topology.failed),
                ("rejected", self.topology.rejected),
            ):
                channel = self.connection.channel()
                try:
                    declared = channel.queue_declare(name, passive=True)
                    depths[role] = int(declared.method.message_count)
                    channel.close()
                except pika.exceptions.ChannelClosedByBroker:
                    continue  # 404: not declared yet
            return depths
        except (pika.exceptions.AMQPError, OSError) as exc:
            self.close()
            raise BrokerUnavailableError(describe_error(exc)) from None

    def close(self) -> None:
        connection, self.connection = self.connection, None
        if connection is not None and connection.is_open:
            try:
                connection.close()
            except Exception:  # closing a broken connection: nothing more to do
                pass
