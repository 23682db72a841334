"""Hostile deliveries against the real RabbitMQ: nothing a client publishes stops the consumer.

Each payload here crashed or stalled the intake before: a deep or huge-number body escaped the
callback (exit 4, a crash loop on redelivery), a 130 KB field name made a reason bigger than the
broker's frame, a float header could not be encoded again, a header pika cannot decode killed
every start. Each must end in ``{prefix}.rejected`` with the body unchanged.
"""

from __future__ import annotations

import json
import shlex
import struct
import subprocess
import threading
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pika
import pika.data
import pytest

from adapters.rabbitmq import QUEUE_ARGUMENTS, Topology, send_queue_arguments
from adapters.rabbitmq_intake import RabbitIntake
from adapters.rabbitmq_reject import MAX_REASON_BYTES
from domain.ports import Delivery
from tests.waiting import wait_until


def valid(message_id: str, **extra: Any) -> bytes:
    fields = {"message_id": message_id, "channel": "sms", "to": "+447700900123", "body": "hi"}
    return json.dumps(fields | extra).encode()


class Collected:
    """An intake whose batches are acked at once, as if every Received were durable."""

    def __init__(self, url: str, prefix: str) -> None:
        self.intake = RabbitIntake(url, Topology(prefix), heartbeat=10, prefetch=50, batch_size=10)
        self.requests: list[str] = []
        self.lost: list[str] = []
        self.lock = threading.Lock()

    def start(self) -> None:
        self.intake.start(self._batch, self.lost.append)

    def _batch(self, batch: list[Delivery]) -> None:
        with self.lock:
            self.requests.extend(d.request.message_id for d in batch)
        self.intake.ack([d.tag for d in batch])

    def wait_for(self, ids: set[str], timeout: float = 20) -> None:
        def missing() -> set[str]:
            with self.lock:
                return ids - set(self.requests)

        wait_until(lambda: not missing(), timeout, message=lambda: f"not received: {sorted(missing())}")


@pytest.fixture
def collected(amqp_url: str, prefix: str) -> Iterator[Collected]:
    consumer = Collected(amqp_url, prefix)
    yield consumer
    consumer.intake.stop()


def drain(channel: Any, queue: str, count: int, timeout: float = 20) -> list[tuple[Any, bytes]]:
    """``count`` messages taken off ``queue`` (waits up to ``timeout`` for them)."""
    got: list[tuple[Any, bytes]] = []

    def all_there() -> bool:
        while len(got) < count and (message := channel.basic_get(queue, auto_ack=True))[0] is not None:
            got.append((message[1], message[2]))
        return len(got) == count

    wait_until(all_there, timeout, message=lambda: f"{len(got)} of {count} messages on {queue}")
    return got


HOSTILE = [
    b"[" * 1100 + b"]" * 1100,
    b'{"channel": "sms", "to": "+447700900123", "body": ' + b"7" * 5000 + b"}",
    json.dumps({"k" * 130_000: 1}).encode(),
    b'{"a":' * 12_000,
    b"\xff\xfe" * 1000,
    valid("cid-euro", correlation_id="€" * 128),
    valid("cid-nul", correlation_id="a\x00b"),
    valid("body-nul", body="a\x00b"),
]


def test_hostile_bodies_are_rejected_unchanged_and_the_consumer_keeps_going(
    collected: Collected, rabbit: Any, prefix: str
) -> None:
    collected.start()
    for i, body in enumerate(HOSTILE):
        rabbit.basic_publish("", f"{prefix}.send", body)
        rabbit.basic_publish("", f"{prefix}.send", valid(f"ok-{i}"))

    collected.wait_for({f"ok-{i}" for i in range(len(HOSTILE))})
    rejected = drain(rabbit, f"{prefix}.rejected", len(HOSTILE))
    assert sorted(body for _p, body in rejected) == sorted(HOSTILE)
    for properties, _body in rejected:
        reason = properties.headers["x-smeg-error"]
        assert 0 < len(reason.encode()) <= MAX_REASON_BYTES
        assert "\n" not in reason
    assert collected.intake.is_alive()
    assert collected.lost == []


def test_headers_that_cannot_be_encoded_again_are_dropped_and_the_rest_copied(
    collected: Collected, rabbit: Any, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    collected.start()
    headers = {
        "big-float": Raw(struct.pack(">cd", b"d", 1e19)),
        "tenant": "acme",
        "huge": "x" * 100_000,
        "price": Decimal("1.50"),
    }
    publish_raw(rabbit, f"{prefix}.send", b"not json", headers, monkeypatch)
    rabbit.basic_publish("", f"{prefix}.send", valid("after-headers"))

    collected.wait_for({"after-headers"})
    [(properties, body)] = drain(rabbit, f"{prefix}.rejected", 1)
    assert body == b"not json"
    assert properties.headers["tenant"] == "acme"
    assert properties.headers["price"] == Decimal("1.50")
    assert "big-float" not in properties.headers
    assert "huge" not in properties.headers
    assert set(properties.headers["x-smeg-dropped-headers"].split(", ")) == {"big-float", "huge"}


def test_a_deleted_rejected_queue_is_declared_again(collected: Collected, rabbit: Any, prefix: str) -> None:
    collected.start()
    rabbit.queue_delete(f"{prefix}.rejected")
    rabbit.basic_publish("", f"{prefix}.send", b"{broken")
    rabbit.basic_publish("", f"{prefix}.send", valid("after-delete"))

    collected.wait_for({"after-delete"})
    [(properties, body)] = drain(rabbit, f"{prefix}.rejected", 1)
    assert body == b"{broken"
    assert properties.headers["x-smeg-error"].startswith("body is not JSON")


def test_a_rejected_queue_that_refuses_leaves_the_message_with_the_broker_and_smeg_running(
    collected: Collected, rabbit: Any, prefix: str
) -> None:
    refusing = {"x-max-length": 1, "x-overflow": "reject-publish"}  # classic: nacks at once
    rabbit.queue_declare(f"{prefix}.rejected", durable=True, arguments=refusing)
    rabbit.basic_publish("", f"{prefix}.rejected", b"full")
    rabbit.queue_declare(f"{prefix}.failed", durable=True, arguments=QUEUE_ARGUMENTS)
    rabbit.queue_declare(f"{prefix}.send", durable=True, arguments=send_queue_arguments(f"{prefix}.rejected"))
    collected.intake.topology = RefusingRejectedTopology(prefix)
    collected.start()
    rabbit.basic_publish("", f"{prefix}.send", b"{broken")
    rabbit.basic_publish("", f"{prefix}.send", valid("after-nack"))

    collected.wait_for({"after-nack"})
    assert collected.intake.is_alive()
    assert collected.lost == []
    # Rejected without requeue: the broker holds it as a dead letter of the send queue (at-least-once)
    # until the rejected queue takes it; no consumer sees it again.
    wait_until(  # the broker's queue statistics are emitted every 5 s
        lambda: queue_totals(prefix)[f"{prefix}.send"] == 1,
        30,
        1,
        message=lambda: f"the send queue holds {queue_totals(prefix)[f'{prefix}.send']} messages, not 1",
    )
    assert message_count(rabbit, f"{prefix}.send", 0) == 0


class RefusingRejectedTopology(Topology):
    """The topology, with a rejected queue declared (by the test) to refuse every publish."""

    def declare(self, channel: Any) -> bool:
        return True


def queue_totals(prefix: str) -> dict[str, int]:
    """Every message a queue holds, dead letters waiting for their target included."""
    out = subprocess.run(
        ["rabbitmqctl", "list_queues", "-q", "--no-table-headers", "name", "messages"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    rows = (line.split("\t") for line in out.splitlines() if line.startswith(prefix))
    return {name: int(count) for name, count in rows}


class Raw:
    """A header value sent as these exact field bytes, as a client in another language may."""

    def __init__(self, field: bytes) -> None:
        self.field = field


def publish_raw(
    channel: Any, queue: str, body: bytes, headers: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    encode = pika.data.encode_value

    def encode_value(pieces: list[bytes], value: Any) -> int:
        if isinstance(value, Raw):
            pieces.append(value.field)
            return len(value.field)
        return encode(pieces, value)

    with monkeypatch.context() as patch:
        patch.setattr(pika.data, "encode_value", encode_value)
        channel.basic_publish("", queue, body, pika.BasicProperties(headers=headers))


def publish_undecodable(channel: Any, queue: str, body: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    """A header timestamp no datetime can hold: pika drops the connection on reading it."""
    publish_raw(channel, queue, body, {"t": Raw(struct.pack(">cQ", b"T", 2**63))}, monkeypatch)


def test_a_delivery_pika_cannot_decode_leaves_the_send_queue_by_its_delivery_limit(
    collected: Collected, rabbit: Any, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    rabbit.queue_declare(f"{prefix}.rejected", durable=True, arguments=QUEUE_ARGUMENTS)
    Topology(prefix).declare(rabbit)
    rabbit.basic_publish("", f"{prefix}.send", valid("before"))
    publish_undecodable(rabbit, f"{prefix}.send", b"poison", monkeypatch)
    after = {f"after-{i}" for i in range(120)}  # past the one-at-a-time stretch (prefetch 50)
    for message_id in sorted(after):
        rabbit.basic_publish("", f"{prefix}.send", valid(message_id))

    collected.start()  # the poison is there from the first read: the start itself must survive it
    collected.wait_for({"before", *after}, timeout=60)
    assert collected.intake.is_alive()
    assert collected.lost == []
    assert message_count(rabbit, f"{prefix}.rejected", 1) == 1
    assert message_count(rabbit, f"{prefix}.send", 0) == 0


def message_count(channel: Any, queue: str, expected: int, timeout: float = 30) -> int:
    """Messages ready in ``queue`` once they are ``expected`` (counted, not read: pika cannot decode
    the poisoned header); AssertionError if they are not within ``timeout``."""

    def count() -> int:
        return int(channel.queue_declare(queue, passive=True).method.message_count)

    wait_until(lambda: count() == expected, timeout, 0.1, message=lambda: f"{queue} holds {count()}")
    return expected


def test_an_older_send_queue_is_used_as_it_is_with_a_warning_naming_the_policy(
    rabbit: Any, prefix: str
) -> None:
    rabbit.queue_declare(f"{prefix}.send", durable=True, arguments=QUEUE_ARGUMENTS)
    topology = Topology(prefix)

    assert topology.declare(rabbit) is False
    assert topology.declare(rabbit) is False  # and again: the channel survived the probe
    command = topology.poison_policy_command()
    assert command.startswith(f"rabbitmqctl set_policy {prefix}-send-poison ")


def test_the_named_policy_gives_an_older_send_queue_the_same_poison_handling(
    collected: Collected, rabbit: Any, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    rabbit.queue_declare(f"{prefix}.rejected", durable=True, arguments=QUEUE_ARGUMENTS)
    rabbit.queue_declare(f"{prefix}.send", durable=True, arguments=QUEUE_ARGUMENTS)
    command = Topology(prefix).poison_policy_command()
    subprocess.run(shlex.split(command), check=True, capture_output=True, timeout=60)
    try:
        publish_undecodable(rabbit, f"{prefix}.send", b"poison", monkeypatch)
        rabbit.basic_publish("", f"{prefix}.send", valid("after"))

        collected.start()
        collected.wait_for({"after"}, timeout=60)
        assert collected.intake.dead_letters is False
        assert message_count(rabbit, f"{prefix}.rejected", 1) == 1
    finally:
        subprocess.run(
            ["rabbitmqctl", "clear_policy", f"{prefix}-send-poison"], check=False, capture_output=True
        )
