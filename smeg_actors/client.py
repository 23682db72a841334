"""Publish send requests to smeg from Python: validated as smeg validates them, confirmed by the broker.

Importable with pika alone: this module imports ``domain.request`` (pure Python, the very rules
smeg's consumer applies) and pika, never the runtime or ``adapters`` (which need structlog).

Every request is encoded to JSON and run through ``domain.request.parse_send_request`` before it
is published, so a request the client accepts is one smeg accepts, and the bytes checked are the
bytes sent. Publishing uses publisher confirms and ``mandatory``: a call returns only once the
broker has enqueued every message, and anything else is an exception of this module.

Idempotency: smeg records a ``message_id`` once; a request published again with the same id is
acked and ignored. So when a call fails with an outcome that is not known (``NotConfirmed`` with
``maybe_published``), sending the same requests again *with the same message ids* is safe, and
sending them with new ids may deliver them twice. The client never resends by itself.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import pika
import pika.exceptions

from domain.errors import InvalidRequestError
from domain.request import parse_send_request
from smeg_actors.client_errors import (
    BrokerUnavailable,
    InvalidRequest,
    NotConfirmed,
    NotRouted,
    PublishFailed,
    SmegClientError,
)

__all__ = [
    "BrokerUnavailable",
    "InvalidRequest",
    "NotConfirmed",
    "NotRouted",
    "PublishFailed",
    "SmegClient",
    "SmegClientError",
]

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
APP_ID = "smeg-client"
#: The keyword names of ``SmegClient.send``: the keys a request of ``send_many`` may have.
FIELDS = tuple(
    ["channel", "to", "body", "message_id", "correlation_id", "sender", "provider", "metadata", "traceparent"]
)
#: A W3C trace context ``traceparent`` (version 00): smeg's intake span becomes its child.
TRACEPARENT_RE = re.compile(r"00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}")
#: Publishes awaiting their confirm before the client waits for some: bounds the memory a large
#: ``send_many`` holds in pika's buffers without a round trip per message.
WINDOW = 1000
RESEND = "sending them again with the same message_id is safe (smeg ignores an id it has)"


@dataclass(frozen=True, slots=True)
class _Outgoing:
    message_id: str
    correlation_id: str
    body: bytes
    traceparent: str | None = None


class SmegClient:
    """Publishes send requests to ``{prefix}.send`` on one lazily opened connection.

    Thread-safe, serialised: pika connections are not thread-safe, so a lock lets one call at a
    time publish (validation runs outside it). For more throughput, give each thread a client or
    use ``send_many``. A connection found lost when a call starts is reopened once; if that
    fails, ``BrokerUnavailable``. ``close()`` (or leaving the ``with`` block) closes the
    connection; a later call would open a new one.

    Args:
        url: AMQP URL (its password appears in no message or repr).
        prefix: ``SMEG_QUEUE_PREFIX`` of the smeg to send to.
        confirm_timeout: the longest wait, in seconds, for the broker's next confirm (and for a
            blocked connection to be unblocked); past it the outcome is unknown: ``NotConfirmed``.
    """

    def __init__(
        self, url: str = DEFAULT_URL, *, prefix: str = "smeg", confirm_timeout: float = 10.0
    ) -> None:
        if not confirm_timeout > 0:
            raise ValueError(f"confirm_timeout must be positive, not {confirm_timeout!r}")
        try:
            self._params = pika.URLParameters(url)
        except Exception as exc:  # pika raises IndexError, ValueError … for a malformed URL
            raise ValueError(f"invalid AMQP URL: {type(exc).__name__}: {exc}") from None
        self._params.blocked_connection_timeout = confirm_timeout
        self._params.socket_timeout = 5
        self._params.connection_attempts = 1
        self._params.client_properties = {"connection_name": APP_ID}
        self.prefix, self.queue, self.confirm_timeout = prefix, f"{prefix}.send", confirm_timeout
        self._lock = threading.Lock()
        self._connection: Any = None
        self._channel: Any = None
        self._pending: dict[int, int] = {}  # delivery tag -> index in the current batch
        self._acked: set[int] = set()
        self._refused: set[int] = set()  # nacked
        self._returned: set[str] = set()  # message ids the broker could not route
        self._tag = 0
        self._progress = 0.0
        self._selected = False

    def __repr__(self) -> str:
        return f"SmegClient({self._params.host}:{self._params.port}, prefix={self.prefix!r})"

    def __enter__(self) -> SmegClient:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def send(
        self,
        channel: str,
        to: str,
        body: str,
        *,
        message_id: str | None = None,
        correlation_id: str | None = None,
        sender: str | None = None,
        provider: str | None = None,
        metadata: Mapping[str, str] | None = None,
        traceparent: str | None = None,
    ) -> str:
        """Validate one request, publish it, wait for the broker's confirm; return its message id.

        ``message_id`` defaults to a fresh uuid4 hex and ``correlation_id`` to the message id;
        ``sender`` is the request's ``from``; ``traceparent`` (W3C, version 00) is sent as the
        AMQP header smeg's tracing continues from. Raises ``InvalidRequest``, ``BrokerUnavailable``,
        ``NotRouted`` or ``NotConfirmed``; after the last, sending again with the same
        ``message_id`` is safe (smeg ignores an id it has).
        """
        request = {
            "channel": channel,
            "to": to,
            "body": body,
            "message_id": message_id,
            "correlation_id": correlation_id,
            "sender": sender,
            "provider": provider,
            "metadata": metadata,
            "traceparent": traceparent,
        }
        outgoing = _prepared(request, None)
        with self._lock:
            self._publish([outgoing])
        return outgoing.message_id

    def send_many(self, requests: Iterable[Mapping[str, Any]]) -> list[str]:
        """Validate every request, then publish them all and wait for their confirms; return the ids.

        Each request is a mapping with ``send``'s keyword names (``channel``, ``to``, ``body`` and
        optionally ``message_id``, ``correlation_id``, ``sender``, ``provider``, ``metadata``,
        ``traceparent``).
        One invalid request raises ``InvalidRequest`` (with its ``index``) and nothing is published.
        The broker confirms each message; up to ``WINDOW`` are in flight at once, so there is no
        round trip per message. Once the broker refuses one, the rest are not published;
        ``PublishFailed.unconfirmed`` lists them all.
        """
        outgoing = [_prepared(request, index) for index, request in enumerate(requests)]
        if outgoing:
            with self._lock:
                self._publish(outgoing)
        return [message.message_id for message in outgoing]

    def close(self) -> None:
        """Close the connection (idempotent)."""
        with self._lock:
            self._discard()

    # --- the connection ------------------------------------------------------------------

    def _connect(self) -> Any:
        """A new connection (a seam: the unit tests put a fake broker here)."""
        return pika.BlockingConnection(self._params)

    def _ready(self) -> None:
        """A connection and a channel in confirm mode: the one open, if still alive, else a new one.

        A connection found lost is reopened (once: if that fails, ``BrokerUnavailable``): nothing
        of this call has been published yet, so opening again is safe. The probe also answers the
        broker's heartbeats on a client that was idle.
        """
        if self._connection is not None:
            try:
                self._connection.process_data_events(time_limit=0)
                if self._connection.is_open and self._channel.is_open:
                    return
            except pika.exceptions.AMQPError:
                pass
            self._discard()
        where = f"RabbitMQ at {self._params.host}:{self._params.port}"
        try:
            self._connection = self._connect()
            channel = self._connection.channel()
            # pika's own asynchronous channel (as adapters/events_exchange.py uses it): BlockingChannel
            # would wait for each confirm before the next publish (about 800 msg/s to a quorum queue).
            self._channel = channel._impl
            self._channel.add_on_return_callback(self._on_return)
            self._selected = False
            self._channel.confirm_delivery(ack_nack_callback=self._on_confirm, callback=self._on_selected)
            self._tag, self._progress = 0, time.monotonic()
            while not self._selected:
                self._wait()
        except (pika.exceptions.AMQPError, OSError, _Timeout) as exc:
            self._discard(abort=True)
            raise BrokerUnavailable(f"{where}: {_describe(exc)}") from None

    def _discard(self, *, abort: bool = False) -> None:
        """Forget the connection, closing it if it is open; never raises.

        ``abort`` drops it without the closing handshake: on a stalled network a polite close
        waits for pika's heartbeat check to give up (130 s against RabbitMQ's default heartbeat).
        """
        connection, self._connection, self._channel = self._connection, None, None
        if connection is None or not connection.is_open:
            return
        try:
            terminate = getattr(getattr(connection, "_impl", None), "_terminate_stream", None)
            if abort and terminate is not None:  # what pika itself does when a heartbeat is missed
                terminate(pika.exceptions.StreamLostError("aborted by smeg-client"))
                connection.process_data_events(time_limit=0)
            else:
                connection.close()
        except Exception:  # gone (the point of an abort): nothing left to close
            pass

    # --- publishing with confirms ---------------------------------------------------------

    def _publish(self, batch: Sequence[_Outgoing]) -> None:
        self._ready()
        self._pending, self._acked, self._refused, self._returned = {}, set(), set(), set()
        self._progress = time.monotonic()
        timestamp = int(time.time())
        try:
            for index, message in enumerate(batch):
                while len(self._pending) >= WINDOW:
                    self._wait()
                if self._refused or self._returned:
                    break  # the broker said no: publish no more, report the rest as unconfirmed
                properties = pika.BasicProperties(
                    content_type="application/json",
                    delivery_mode=pika.DeliveryMode.Persistent,
                    message_id=message.message_id,
                    correlation_id=message.correlation_id,
                    timestamp=timestamp,
                    app_id=APP_ID,
                    headers={"traceparent": message.traceparent} if message.traceparent else None,
                )
                self._channel.basic_publish("", self.queue, message.body, properties, mandatory=True)
                self._tag += 1
                self._pending[self._tag] = index
            while self._pending:
                self._wait()
        except (pika.exceptions.AMQPError, OSError, _Timeout) as exc:
            self._discard(abort=True)  # confirms still owed would be misread by the next call
            lost = str(exc) if isinstance(exc, _Timeout) else f"connection lost ({_describe(exc)})"
            self._raise(NotConfirmed, batch, f"{lost}; they may have been enqueued: {RESEND}", True)
        if self._returned:
            self._raise(NotRouted, batch, f"no queue {self.queue} (is smeg running, with this prefix?)")
        if self._refused:
            why = f"the broker refused {len(self._refused)} (a nack: is {self.queue} full?); {RESEND}"
            self._raise(NotConfirmed, batch, why)

    def _wait(self) -> None:
        """Let pika read until a confirm arrives; ``_Timeout`` after ``confirm_timeout`` without one."""
        left = self._progress + self.confirm_timeout - time.monotonic()
        if left <= 0:
            raise _Timeout(f"no confirm in {self.confirm_timeout:g}s")
        self._connection.process_data_events(time_limit=left)

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        tags = (
            [t for t in self._pending if t <= method.delivery_tag]
            if method.multiple
            else [method.delivery_tag]
        )
        refused = isinstance(method, pika.spec.Basic.Nack)
        for tag in tags:
            index = self._pending.pop(tag, None)
            if index is not None:
                (self._refused if refused else self._acked).add(index)
        self._progress = time.monotonic()
        # A zero-delay timer makes process_data_events return now rather than at its time limit.
        self._connection.call_later(0, _nothing)

    def _on_selected(self, _frame: Any) -> None:
        self._selected = True
        self._connection.call_later(0, _nothing)

    def _on_return(self, _channel: Any, _method: Any, properties: Any, _body: bytes) -> None:
        self._returned.add(properties.message_id)  # its ack follows: that ends the wait

    def _raise(
        self, kind: type[PublishFailed], batch: Sequence[_Outgoing], why: str, maybe: bool = False
    ) -> None:
        acked = self._acked
        confirmed = [
            m.message_id for i, m in enumerate(batch) if i in acked and m.message_id not in self._returned
        ]
        unconfirmed = [
            m.message_id for i, m in enumerate(batch) if i not in acked or m.message_id in self._returned
        ]
        raise kind(
            f"{len(unconfirmed)} of {len(batch)} messages not confirmed: {why}",
            confirmed=confirmed,
            unconfirmed=unconfirmed,
            maybe_published=maybe,
        )


class _Timeout(Exception):
    """No confirm (or channel) within ``confirm_timeout``."""


def _nothing() -> None:
    pass


def _prepared(request: object, index: int | None) -> _Outgoing:
    """Encode one request as smeg will read it and check it with smeg's own rules."""
    if not isinstance(request, Mapping):
        raise InvalidRequest(f"a request must be a mapping, not {type(request).__name__}", index)
    unknown = sorted(str(key) for key in request if key not in FIELDS)
    if unknown:
        raise InvalidRequest(f"unknown field: {unknown[0]!r} (fields: {', '.join(FIELDS)})", index)
    message_id = request.get("message_id")
    if message_id is None:
        message_id = uuid.uuid4().hex
    correlation_id = request.get("correlation_id")
    data: dict[str, Any] = {
        "message_id": message_id,
        "channel": request.get("channel"),
        "to": request.get("to"),
        "body": request.get("body"),
        "correlation_id": message_id if correlation_id is None else correlation_id,
    }
    for name, key in (("sender", "from"), ("provider", "provider"), ("metadata", "metadata")):
        if request.get(name) is not None:
            data[key] = request[name]
    if isinstance(data.get("metadata"), Mapping):
        if not all(isinstance(key, str) for key in data["metadata"]):
            raise InvalidRequest("metadata keys must be strings", index)  # json would coerce them
        data["metadata"] = dict(data["metadata"])
    traceparent = request.get("traceparent")
    if traceparent is not None and not (
        isinstance(traceparent, str) and TRACEPARENT_RE.fullmatch(traceparent)
    ):
        raise InvalidRequest("traceparent must be a W3C trace context: 00-<32 hex>-<16 hex>-<2 hex>", index)
    try:
        raw = json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: let the domain name it in its own words
        raw = json.dumps(data).encode("ascii")
    except (TypeError, ValueError) as exc:
        raise InvalidRequest(f"request is not JSON: {exc}", index) from None
    try:
        parsed = parse_send_request(raw)
    except InvalidRequestError as exc:
        raise InvalidRequest(str(exc), index) from None
    return _Outgoing(parsed.message_id, parsed.correlation_id, raw, traceparent)


def _describe(exc: BaseException) -> str:
    """One line for a pika error (a failed connect holds its cause as its only argument)."""
    text = str(exc).strip()
    if not text and exc.args:
        text = " ".join(repr(a) if isinstance(a, BaseException) else str(a) for a in exc.args).strip()
    text = " ".join(text.split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
