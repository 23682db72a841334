"""The intake consumer: one thread owns one pika connection, batches valid requests, rejects bad ones.

pika connections are not thread-safe: this thread makes every call on its connection; other threads
reach it only through ``add_callback_threadsafe`` (acks, releases).

A request whose AMQP headers carry a W3C trace context (``traceparent``, ``tracestate``) is handed
over as a ``TracedDelivery`` with those headers: the runtime's tracing continues the producer's trace.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import pika
import pika.exceptions
import structlog
from pika.adapters.blocking_connection import BlockingChannel

from adapters.ack_window import AckWindow
from adapters.rabbitmq import BrokerUnavailableError, Topology, connect, describe_error
from adapters.rabbitmq_reject import capped_reason, lost_to_undecodable_frame, publish_rejected
from domain.errors import InvalidRequestError
from domain.ports import Delivery
from domain.request import parse_send_request, quoted

log = structlog.get_logger(__name__)

#: A tag handed out is ``connection epoch * EPOCH + delivery tag``: an ack for a delivery of a
#: connection that has since been replaced must never settle a new delivery with the same tag.
EPOCH = 1 << 48

#: Connections in a row lost to a frame pika cannot decode before the intake gives up; each loss
#: counts one delivery of the culprit, which the broker dead-letters after DELIVERY_LIMIT.
MAX_UNDECODABLE_IN_A_ROW = 30

#: The W3C trace-context headers passed on, each with the longest value kept (the spec's
#: ``tracestate`` holds 32 members at most; a longer value is client garbage, dropped).
TRACE_HEADERS = {"traceparent": 128, "tracestate": 1024}


@dataclass(frozen=True, slots=True)
class TracedDelivery(Delivery):
    """A delivery whose AMQP headers carried a W3C trace context: (name, value) pairs."""

    trace: tuple[tuple[str, str], ...] = ()


def trace_headers(headers: Any) -> tuple[tuple[str, str], ...]:
    """The trace-context headers among a message's AMQP headers (client input: any type, any size;
    only text of a sane length is kept, and only text the spec allows in it: printable ASCII)."""
    if not headers or not isinstance(headers, dict):
        return ()
    found: list[tuple[str, str]] = []
    for name, limit in TRACE_HEADERS.items():
        value = headers.get(name)
        if isinstance(value, bytes):
            value = value.decode("ascii", "replace")
        if isinstance(value, str) and len(value) <= limit and value.isascii() and value.isprintable():
            found.append((name, value))
    return tuple(found)


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

    ``paused`` (set by the runtime: the operators' ``delivery.paused``) is read on every turn of
    the loop: while it returns True the consumer is cancelled, so nothing more is taken from the
    send queue; what was already delivered is handed over (and held by the pipeline).
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
        #: Called once per request moved to the rejected queue (the runtime counts them).
        self.on_reject: Callable[[], None] = lambda: None
        #: While it returns True, no consumer on the send queue (see the class docstring).
        self.paused: Callable[[], bool] = lambda: False
        self._consumer: str | None = None
        self.known_providers = known_providers
        self._halt = threading.Event()
        self._connection: pika.BlockingConnection | None = None
        self._channel: BlockingChannel | None = None
        self._pending: list[Delivery] = []
        self._on_batch: Callable[[list[Delivery]], None] = lambda _b: None
        self._on_lost: Callable[[str], None] = lambda _r: None
        self._lost = False
        self._window = AckWindow()
        self._epoch = 0
        self._undecodable = 0
        #: Good deliveries still to read one at a time after a connection lost to a poison one.
        self._careful = 0
        #: Whether the send queue dead-letters what smeg rejects (False on an older install).
        self.dead_letters = True

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

    def _current(self, tags: list[int]) -> list[int]:
        """The delivery tags of this connection among ``tags``; the others went back to the broker
        with the connection that delivered them (and come again, as duplicates the store knows)."""
        base = self._epoch * EPOCH
        current = [tag - base for tag in tags if base < tag < base + EPOCH]
        if len(current) != len(tags):
            log.info("settlement_of_an_old_connection_skipped", count=len(tags) - len(current))
        return current

    def _requeue(self, tags: list[int]) -> None:
        channel = self._channel
        tags = self._current(tags)
        if channel is None or not channel.is_open or not tags:
            return
        settled = self._window.released(tags)
        for tag in tags:
            channel.basic_nack(tag, requeue=True)
        if settled is not None:
            channel.basic_ack(settled, multiple=True)

    @property
    def consuming(self) -> bool:
        """Connected, with a consumer on the send queue or paused on purpose (for readiness; no I/O)."""
        return self.is_alive() and self._channel is not None and not self._lost and self._start_error is None

    def stop(self) -> None:
        self._halt.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(10)

    def run(self) -> None:
        while True:
            try:
                self._open()
                self._ready.set()
                self._loop()
            except Exception as exc:
                if lost_to_undecodable_frame(exc) and self._undecodable < MAX_UNDECODABLE_IN_A_ROW:
                    # Reconnect at once: the broker counts the delivery and dead-letters it after
                    # DELIVERY_LIMIT; exiting instead would cost a process restart per count.
                    self._undecodable += 1
                    self._careful = self.prefetch
                    log.error(
                        "undecodable_delivery_dropped_connection",
                        error=describe_error(exc),
                        in_a_row=self._undecodable,
                    )
                    continue
                if not self._ready.is_set():
                    self._start_error = exc
                    self._ready.set()
                    return
                # No graceful close: on a dead or silent network it would wait for the broker's
                # close-ok until pika's own timeout. The process is about to exit; the broker
                # requeues everything unacked when it notices the connection is gone.
                self._lost = True
                log.error("broker_connection_lost", error=describe_error(exc))
                self._on_lost(describe_error(exc))
                return
            break
        self._close()

    def _open(self) -> None:
        """Connect and consume, as a new epoch: what the last connection delivered is void."""
        self._epoch += 1
        self._pending = []
        self._window = AckWindow()
        self._channel = None
        self._connection = connect(self.url, heartbeat=self.heartbeat, name="smeg-intake")
        channel = self._connection.channel()
        self.dead_letters = self.topology.declare(channel)
        channel.confirm_delivery()
        # After a poison delivery, read one at a time: each loss of the connection counts a
        # delivery of every message unacked on it, and only the poison should reach the limit.
        channel.basic_qos(prefetch_count=1 if self._careful else self.prefetch)
        channel.add_on_cancel_callback(self._cancelled)
        self._channel, self._consumer = channel, None
        if self.paused():
            log.warning("intake_paused", queue=self.topology.send)
        else:
            self._consumer = channel.basic_consume(self.topology.send, self._received)

    def _loop(self) -> None:
        assert self._connection is not None
        oldest = time.monotonic()
        watchdog = SilenceWatchdog(self._connection, limit=2.0 * self.heartbeat + 1)
        while not self._halt.is_set():
            self._connection.process_data_events(time_limit=self.batch_wait)
            if self._lost:
                raise BrokerUnavailableError("consumer cancelled by the broker")
            watchdog.check()
            self._follow_pause()
            if not self._pending:
                oldest = time.monotonic()
                continue
            full = len(self._pending) >= self.batch_size
            if (full or time.monotonic() - oldest >= self.batch_wait) and not self.hold():
                batch, self._pending = self._pending, []
                self._on_batch(batch)
                oldest = time.monotonic()

    def _follow_pause(self) -> None:
        """Cancel the consumer when delivery is paused, consume again when it resumes."""
        channel, paused = self._channel, self.paused()
        if channel is None or paused == (self._consumer is None):
            return
        if not paused:
            self._consumer = channel.basic_consume(self.topology.send, self._received)
            log.warning("intake_resumed", queue=self.topology.send)
            return
        # pika hands back (requeues) what arrived but was not yet passed to ``_received``
        channel.basic_cancel(self._consumer)
        self._consumer = None
        batch, self._pending = self._pending, []
        if batch:  # already taken: recorded, then held by the pipeline (never a delivery count)
            self._on_batch(batch)
        log.warning("intake_paused", queue=self.topology.send, handed_over=len(batch))

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
        """Batch a valid request; reject anything else. Nothing raised while judging one
        delivery may leave this callback: it would stop the consumer for every other one."""
        self._undecodable = 0
        if self._careful:
            self._careful -= 1
            if not self._careful:
                channel.basic_qos(prefetch_count=self.prefetch)
        tag = method.delivery_tag
        try:
            request = parse_send_request(
                body, correlation_id=properties.correlation_id, strict_loads=orjson.loads
            )
            if self.known_providers is not None and request.provider not in (
                None,
                *self.known_providers,
            ):
                raise InvalidRequestError(f"unknown provider: {quoted(request.provider or '')}")
        except InvalidRequestError as exc:
            self._reject(channel, tag, body, properties, str(exc))
            return
        except Exception as exc:
            log.error("request_check_crashed", error=type(exc).__name__, size=len(body))
            why = f"request could not be checked ({type(exc).__name__})"
            self._reject(channel, tag, body, properties, why)
            return
        self._window.delivered(tag)
        trace = trace_headers(properties.headers)
        tag += self._epoch * EPOCH
        self._pending.append(TracedDelivery(tag, request, trace) if trace else Delivery(tag, request))

    def _reject(
        self,
        channel: BlockingChannel,
        tag: int,
        body: bytes,
        properties: pika.BasicProperties,
        why: str,
    ) -> None:
        """Move the delivery to the rejected queue; if the broker refuses that publish, let the
        send queue dead-letter it there (an older queue without dead-lettering gets it back)."""
        self.on_reject()
        if publish_rejected(channel, self.topology.rejected, body, properties, why):
            channel.basic_ack(tag)
            log.warning("request_rejected", reason=capped_reason(why), size=len(body))
        else:
            channel.basic_reject(tag, requeue=not self.dead_letters)

    def _ack(self, tags: list[int]) -> None:
        channel = self._channel
        if channel is None or not channel.is_open:
            log.warning("ack_dropped_channel_closed", count=len(tags))
            return
        tags = self._current(tags)
        if not tags:
            return
        settled = self._window.finished(tags)
        if settled is not None:
            channel.basic_ack(settled, multiple=True)
