"""The reject path: an invalid request goes to ``{prefix}.rejected`` unchanged, with a reason.

Everything here must survive a crafted delivery: the reason is capped, only headers that encode
again (and fit a budget far below the broker's frame size) are copied, and a publish the broker
refuses ends in a dead-letter by the broker itself, never in an exception on the consumer thread.
"""

from __future__ import annotations

import builtins
import re
from typing import Any

import pika
import pika.data
import pika.exceptions
import structlog
from pika.adapters.blocking_connection import BlockingChannel

from adapters.rabbitmq import QUEUE_ARGUMENTS, describe_error, short_string

log = structlog.get_logger(__name__)

#: The longest ``x-smeg-error``, in UTF-8 bytes.
MAX_REASON_BYTES = 512
#: The client's headers copied onto a rejected message, in encoded bytes (frame_max is 128 KiB).
MAX_COPIED_HEADER_BYTES = 16 * 1024

_LOST_RE = re.compile(r"Stream connection lost: (\w+)\(")


def capped_reason(why: str) -> str:
    """``why`` on one line, cut to at most ``MAX_REASON_BYTES`` UTF-8 bytes with ``…``."""
    line = " ".join(why.split("\n"))
    data = line.encode("utf-8", "replace")
    if len(data) <= MAX_REASON_BYTES:
        return line
    return data[: MAX_REASON_BYTES - 3].decode("utf-8", "ignore") + "…"


def reencodable_headers(headers: Any) -> tuple[dict[str, Any], list[str]]:
    """The client's headers that encode again and fit the budget, and the names of those dropped.

    A header pika decoded may not encode again (a float beyond 64-bit range, a key longer than
    255 bytes); one that does not, or that would overflow the budget, is left out.
    """
    if not isinstance(headers, dict):
        return {}, []
    kept: dict[str, Any] = {}
    dropped: list[str] = []
    used = 0
    for key, value in headers.items():
        try:
            size = pika.data.encode_table([], {key: value})
        except Exception:
            dropped.append(str(key)[:64])
            continue
        if used + size > MAX_COPIED_HEADER_BYTES:
            dropped.append(str(key)[:64])
            continue
        kept[key] = value
        used += size
    return kept, dropped


def publish_rejected(
    channel: BlockingChannel,
    queue: str,
    body: bytes,
    properties: pika.BasicProperties,
    why: str,
) -> bool:
    """Publish ``body`` unchanged to ``queue`` with the reason; False if the broker refused it.

    A queue that is gone is declared again and the publish tried once more. If the broker still
    refuses, the caller rejects the delivery without requeueing: the send queue dead-letters it
    to the same queue (its ``x-dead-letter-routing-key``), and with the at-least-once strategy
    the broker keeps it until that queue takes it.
    """
    headers, dropped = reencodable_headers(properties.headers)
    headers["x-smeg-error"] = capped_reason(why)
    if dropped:
        headers["x-smeg-dropped-headers"] = capped_reason(", ".join(dropped))
    copied = pika.BasicProperties(
        delivery_mode=pika.DeliveryMode.Persistent,
        content_type=short_string(properties.content_type),
        headers=headers,
        correlation_id=short_string(properties.correlation_id),
        message_id=short_string(properties.message_id),
    )
    try:
        try:
            channel.basic_publish("", queue, body, copied, mandatory=True)
        except pika.exceptions.UnroutableError:
            redeclare(channel, queue)  # deleted while we ran: declare it again, publish once more
            channel.basic_publish("", queue, body, copied, mandatory=True)
    except (pika.exceptions.UnroutableError, pika.exceptions.NackError) as exc:
        log.error("rejected_queue_refused", queue=queue, error=describe_error(exc), size=len(body))
        return False
    return True


def redeclare(channel: BlockingChannel, queue: str) -> None:
    """Declare ``queue`` on a channel of its own: a refused declare closes the channel it ran on."""
    try:
        probe = channel.connection.channel()
        probe.queue_declare(queue, durable=True, arguments=QUEUE_ARGUMENTS)
        probe.close()
    except pika.exceptions.AMQPChannelError as exc:
        log.error("rejected_queue_not_declared", queue=queue, error=describe_error(exc))


def lost_to_undecodable_frame(exc: BaseException) -> bool:
    """Whether pika lost the connection because it could not decode what the broker sent.

    pika reports a frame it cannot decode (a header timestamp out of range, an unknown field
    type) as a lost stream, naming the decoder's error; a network failure names an OSError.
    """
    if not isinstance(exc, pika.exceptions.StreamLostError):
        return False
    match = _LOST_RE.match(str(exc))
    if match is None:
        return False
    name = match.group(1)
    if hasattr(pika.exceptions, name) or name == "error":  # struct.error
        return True
    known = getattr(builtins, name, None)
    return isinstance(known, type) and issubclass(known, Exception) and not issubclass(known, OSError)
