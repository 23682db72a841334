"""The intake consumer: one thread owns one pika connection, batches valid requests, rejects bad ones.

pika connections are not thread-safe: this thread makes every call on its connection; other threads
reach it only through ``add_callback_threadsafe`` (acks, releases).
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import orjson
import pika
import pika.exceptions
import structlog
from pika.adapters.blocking_connection import BlockingChannel

from adapters.rabbitmq import BrokerUnavailableError, Topology, connect, describe_error, publish_confirmed
from domain.errors import InvalidRequestError
from domain.ports import Delivery
from domain.request import parse_send_request

log = structlog.get_logger(__name__)


class SilenceWatchdog:
    """Declares the connection dead when no byte arrived for ``limit`` seconds.

    The broker sends a heartbeat every SMEG_HEARTBEAT/2 s on an idle connection, so silence for
    two heartbeats means the network is gone. pika's own checker only looks every
    ``heartbeat + 5`` s, which can take up to 2 × (heartbeat + 5) s to notice a stall.
    """

    def __init__(self, connection: pika.BlockingConnection, *, limit: float) -> None:
        self.impl = getattr(connection, "_impl", None)
        self.limit = limit
        self.seen = self._received()
        self.since = time.monotonic()

    def _received(self) -> int:
        return int(getattr(self.impl, "bytes_received", 0))

    def check(self) -> None:
        received, now = self._received(), time.monotonic()
        if received != self.seen:
            self.seen, self.since = received, now
        elif now - self.since > self.limit:
            raise BrokerUnavailableError(f"no traffic from the broker for {now - self.since:.0f}s")


class AckWindow:
    """Which deliveries one ``multiple=True`` ack may settle now (consumer thread only).

    Batches finish out of order (several intake actors take them in turn). Acking a batch that
    finished before a lower one tag by tag cost a frame and a flush of the connection each, on
    the consumer thread every request passes through; instead a finished tag waits until every
    lower tag still pending is settled, and one ``multiple=True`` ack then covers them all.
    """

    def __init__(self) -> None:
        self.pending: set[int] = set()
        self.done: set[int] = set()

    def delivered(self, tag: int) -> None:
        self.pending.add(tag)

    def finished(self, tags: Sequence[int]) -> int | None:
        """``tags`` are durable; the tag to ack with ``multiple=True``, if any may be now."""
        self.pending.difference_update(tags)
        self.done.update(tags)
        return self._settled()

    def released(self, tags: Sequence[int]) -> int | None:
        """``tags`` went back to the broker; finished tags above them may now be acked."""
        self.pending.difference_update(tags)
        self.done.difference_update(tags)
        return self._settled()

    def leftover(self) -> list[int]:
        """Finished tags still waiting on a lower one (to ack one by one when closing)."""
        left, self.done = sorted(self.done), set()
        return left

    def _settled(self) -> int | None:
        if not self.done:
            return None
        if self.pending:
            low = min(self.pending)
            ready = [tag for tag in self.done if tag < low]
        else:
            ready = list(self.done)
        if not ready:
            return None
        self.done.difference_update(ready)
        return max(ready)


class RabbitIntake(threading.Thread):
    """The consumer thread: owns one connection, batches valid requests, rejects bad ones.

    Args:
        url: AMQP URL.
        topology: queue names.
        heartbeat: AMQP heartbeat in seconds.
        prefetch: unacked deliveries the broker may hand us (bounds memory and ingress).
        batch_size: at most this many requests per batch.
        batch_wait: seconds to wait for a batch to fill.
        hold: called before each read; while it returns True the thread keeps the connection
            alive but stops passing on deliveries (backpressure from the pipeline).
    """

    def __init__(
        self,
        url: str,
        topology: Topology,
        *,
        heartbeat: int = 30,
        prefetch: int = 500,
        batch_size: int = 200,
        batch_wait: float = 0.01,
        hold: Callable[[], bool] = lambda: False,
        known_providers: set[str] | None = None,
    ) -> None:
        super().__init__(name="smeg-intake", daemon=True)
        self.url, self.topology, self.heartbeat = url, topology, heartbeat
        self.prefetch, self.batch_size, self.batch_wait = prefetch, batch_size, batch_wait
        self.hold = hold
        self.known_providers = known_providers
        self._halt = threading.Event()
        self._connection: pika.BlockingConnection | None = None
        self._channel: BlockingChannel | None = None
        self._pending: list[Delivery] = []
        self._on_batch: Callable[[list[Delivery]], None] = lambda _b: None
        self._on_lost: Callable[[str], None] = lambda _r: None
        self._lost = False
        self._window = AckWindow()

    def start(  # type: ignore[override]
        self, on_batch: Callable[[list[Delivery]], None], on_lost: Callable[[str], None]
    ) -> None:
        """Connect (raising BrokerUnavailableError in the caller's thread), then consume."""
        self._on_batch, self._on_lost = on_batch, on_lost
        self._ready = threading.Event()
        self._start_error: BaseException | None = None
        super().start()
        self._ready.wait(30)
        if self._start_error is not None:
            raise BrokerUnavailableError(describe_error(self._start_error))

    def ack(self, tags: Sequence[int]) -> None:
        """Ack from any thread: the ack runs in the consumer thread, on the delivering channel."""
        connection = self._connection
        if not tags or connection is None:
            return
        try:
            connection.add_callback_threadsafe(functools.partial(self._ack, sorted(tags)))
        except Exception as exc:
            log.warning("ack_not_sent", error=describe_error(exc), count=len(tags))

    def release(self, tags: Sequence[int]) -> None:
        """Requeue deliveries from any thread (the intake actor crashed while holding them)."""
        connection = self._connection
        if not tags or connection is None:
            return
        try:
            connection.add_callback_threadsafe(functools.partial(self._requeue, sorted(tags)))
        except Exception as exc:
            log.warning("release_not_sent", error=describe_error(exc), count=len(tags))

    def _requeue(self, tags: list[int]) -> None:
        channel = self._channel
        if channel is None or not channel.is_open:
            return
        settled = self._window.released(tags)
        for tag in tags:
            channel.basic_nack(tag, requeue=True)
        if settled is not None:
            channel.basic_ack(settled, multiple=True)

    def stop(self) -> None:
        self._halt.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(10)

    def run(self) -> None:
        try:
            self._open()
        except BaseException as exc:
            self._start_error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            self._loop()
        except Exception as exc:
            # No graceful close: on a dead or silent network it would wait for the broker's
            # close-ok until pika's own timeout. The process is about to exit; the broker
            # requeues everything unacked when it notices the connection is gone.
            self._lost = True
            log.error("broker_connection_lost", error=describe_error(exc))
            self._on_lost(describe_error(exc))
            return
        self._close()

    def _open(self) -> None:
        self._connection = connect(self.url, heartbeat=self.heartbeat, name="smeg-intake")
        channel = self._connection.channel()
        self.topology.declare(channel)
        channel.confirm_delivery()
        channel.basic_qos(prefetch_count=self.prefetch)
        channel.add_on_cancel_callback(self._cancelled)
        channel.basic_consume(self.topology.send, self._received)
        self._channel = channel

    def _loop(self) -> None:
        assert self._connection is not None
        oldest = time.monotonic()
        watchdog = SilenceWatchdog(self._connection, limit=2.0 * self.heartbeat + 1)
        while not self._halt.is_set():
            self._connection.process_data_events(time_limit=self.batch_wait)
            if self._lost:
                raise BrokerUnavailableError("consumer cancelled by the broker")
            watchdog.check()
            if not self._pending:
                oldest = time.monotonic()
                continue
            full = len(self._pending) >= self.batch_size
            if (full or time.monotonic() - oldest >= self.batch_wait) and not self.hold():
                batch, self._pending = self._pending, []
                self._on_batch(batch)
                oldest = time.monotonic()

    def _close(self) -> None:
        connection, channel = self._connection, self._channel
        if channel is not None and channel.is_open:
            try:
                for tag in self._window.leftover():  # durable, behind a lower tag handed back
                    channel.basic_ack(tag)
            except Exception as exc:
                log.warning("acks_not_sent_at_close", error=describe_error(exc))
        if connection is not None and connection.is_open:
            try:
                connection.close()
            except Exception as exc:
                log.warning("broker_close_failed", error=describe_error(exc))

    def _cancelled(self, _frame: Any) -> None:
        log.error("consumer_cancelled_by_broker", queue=self.topology.send)
        self._lost = True

    def _received(
        self,
        channel: BlockingChannel,
        method: Any,
        properties: pika.BasicProperties,
        body: bytes,
    ) -> None:
        try:
            request = parse_send_request(
                body, correlation_id=properties.correlation_id, strict_loads=orjson.loads
            )
            if self.known_providers is not None and request.provider not in (
                None,
                *self.known_providers,
            ):
                raise InvalidRequestError(f"unknown provider: {request.provider}")
        except InvalidRequestError as exc:
            self._reject(channel, method.delivery_tag, body, properties, str(exc))
            return
        self._window.delivered(method.delivery_tag)
        self._pending.append(Delivery(tag=method.delivery_tag, request=request))

    def _reject(
        self,
        channel: BlockingChannel,
        tag: int,
        body: bytes,
        properties: pika.BasicProperties,
        why: str,
    ) -> None:
        headers = dict(properties.headers or {})
        headers["x-smeg-error"] = why
        publish_confirmed(
            channel,
            self.topology.rejected,
            body,
            headers=headers,
            correlation_id=properties.correlation_id,
        )
        channel.basic_ack(tag)
        log.warning("request_rejected", reason=why, size=len(body))

    def _ack(self, tags: list[int]) -> None:
        channel = self._channel
        if channel is None or not channel.is_open:
            log.warning("ack_dropped_channel_closed", count=len(tags))
            return
        settled = self._window.finished(tags)
        if settled is not None:
            channel.basic_ack(settled, multiple=True)
