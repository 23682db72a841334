"""SmegClient against the real RabbitMQ: what arrives in the send queue, and every way it can fail.

Each test declares the topology as smeg does (``Topology(prefix).declare``) on a prefix of its
own, which the ``prefix`` fixture deletes afterwards; the client itself declares nothing.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pika
import pytest

from adapters.rabbitmq import QUEUE_ARGUMENTS, Topology
from adapters.rabbitmq_intake import TRACE_HEADERS
from domain.request import parse_send_request
from smeg_actors.client import BrokerUnavailable, NotConfirmed, NotRouted, SmegClient
from tests.e2e.conftest import TcpProxy
from tests.integration.test_hostile_intake import Collected, drain
from tests.waiting import wait_until

SMS: dict[str, Any] = {"channel": "sms", "to": "+447700900123", "body": "hi"}


@pytest.fixture
def send_queue(rabbit: Any, prefix: str) -> str:
    Topology(prefix).declare(rabbit)
    return f"{prefix}.send"


@pytest.fixture
def client(amqp_url: str, prefix: str) -> Iterator[SmegClient]:
    with SmegClient(amqp_url, prefix=prefix, confirm_timeout=5) as smeg:
        yield smeg


def test_send_enqueues_the_request_with_its_properties(
    client: SmegClient, rabbit: Any, send_queue: str
) -> None:
    message_id = client.send(
        "sms", "+447700900123", "Your code is 123456", correlation_id="req-8f2c", metadata={"a": "b"}
    )

    [(properties, body)] = drain(rabbit, send_queue, 1)
    request = parse_send_request(body)
    assert (request.message_id, request.correlation_id) == (message_id, "req-8f2c")
    assert (request.channel, request.to, request.body) == ("sms", "+447700900123", "Your code is 123456")
    assert request.metadata == {"a": "b"}
    assert (properties.message_id, properties.correlation_id) == (message_id, "req-8f2c")
    assert properties.delivery_mode == 2
    assert (properties.content_type, properties.app_id) == ("application/json", "smeg-client")
    assert abs(properties.timestamp - time.time()) < 60


def test_a_trace_context_reaches_the_queue_as_the_header_smegs_intake_reads(
    client: SmegClient, rabbit: Any, send_queue: str
) -> None:
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    client.send("sms", "+447700900123", "hi", traceparent=parent)
    [(properties, _body)] = drain(rabbit, send_queue, 1)
    assert properties.headers["traceparent"] == parent  # (a quorum queue adds x-delivery-count)
    assert "traceparent" in TRACE_HEADERS


def test_send_many_enqueues_every_request_in_order(client: SmegClient, rabbit: Any, send_queue: str) -> None:
    requests = [
        SMS | {"message_id": "order-1"},
        {"channel": "im", "to": "@bob", "body": "hé\nllo", "sender": "shop", "provider": "chat"},
        SMS | {"correlation_id": "req-3"},
    ]

    ids = client.send_many(requests)

    got = drain(rabbit, send_queue, 3)
    parsed = [parse_send_request(body) for _p, body in got]
    assert [r.message_id for r in parsed] == ids == [p.message_id for p, _b in got]
    assert ids[0] == "order-1"
    assert (parsed[1].channel, parsed[1].to, parsed[1].body) == ("im", "@bob", "hé\nllo")
    assert (parsed[1].sender, parsed[1].provider) == ("shop", "chat")
    assert [p.correlation_id for p, _b in got] == ["order-1", ids[1], "req-3"]
    assert all(p.delivery_mode == 2 for p, _b in got)


def test_smegs_consumer_accepts_every_request_the_client_sent(
    client: SmegClient, rabbit: Any, send_queue: str, amqp_url: str, prefix: str
) -> None:
    consumer = Collected(amqp_url, prefix)
    consumer.start()
    try:
        ids = client.send_many(
            [
                SMS | {"body": "€" * 1600, "correlation_id": "é" * 64},
                SMS | {"metadata": {"k" * 64: "tab\there\nnewline"}},
                {"channel": "im", "to": "x" * 256, "body": "🙂", "sender": "s" * 256},
            ]
        )
        consumer.wait_for(set(ids))
    finally:
        consumer.intake.stop()
    assert rabbit.queue_declare(f"{prefix}.rejected", passive=True).method.message_count == 0


def test_5000_requests_in_one_send_many(client: SmegClient, rabbit: Any, send_queue: str) -> None:
    requests = [SMS | {"body": f"n{i}"} for i in range(5000)]

    started = time.perf_counter()
    ids = client.send_many(requests)
    print(f"send_many: {len(ids) / (time.perf_counter() - started):.0f} msg/s")

    assert len(set(ids)) == 5000
    assert rabbit.queue_declare(send_queue, passive=True).method.message_count == 5000


def test_no_send_queue_is_not_routed_and_declares_nothing(amqp_url: str, rabbit: Any, prefix: str) -> None:
    with SmegClient(amqp_url, prefix=prefix) as smeg, pytest.raises(NotRouted) as caught:
        smeg.send_many([SMS | {"message_id": "a"}, SMS | {"message_id": "b"}])

    assert caught.value.unconfirmed == ["a", "b"] and caught.value.confirmed == []
    assert caught.value.maybe_published is False
    with pytest.raises(pika.exceptions.ChannelClosedByBroker, match="NOT_FOUND"):
        rabbit.queue_declare(f"{prefix}.send", passive=True)


def test_a_full_send_queue_nacks_and_nothing_is_reported_enqueued(
    amqp_url: str, rabbit: Any, prefix: str
) -> None:
    arguments = QUEUE_ARGUMENTS | {"x-max-length": 1, "x-overflow": "reject-publish"}
    rabbit.queue_declare(f"{prefix}.send", durable=True, arguments=arguments)

    def full() -> bool:  # a quorum queue applies its limit a little late: fill it until it says no
        try:
            rabbit.basic_publish("", f"{prefix}.send", b"filler")
        except pika.exceptions.NackError:
            return True
        return False

    wait_until(full, message="the queue never refused a publish")
    before = rabbit.queue_declare(f"{prefix}.send", passive=True).method.message_count

    with SmegClient(amqp_url, prefix=prefix) as smeg, pytest.raises(NotConfirmed) as caught:
        smeg.send_many([SMS | {"message_id": f"m{i}"} for i in range(3)])

    assert (caught.value.confirmed, caught.value.unconfirmed) == ([], ["m0", "m1", "m2"])
    assert caught.value.maybe_published is False
    assert "nack" in str(caught.value)
    assert rabbit.queue_declare(f"{prefix}.send", passive=True).method.message_count == before


def test_a_closed_port_is_broker_unavailable_in_one_line_without_the_password() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed once the block ends: nothing listens there
    client = SmegClient(f"amqp://guest:s3cret-pw@127.0.0.1:{port}/%2F")

    with pytest.raises(BrokerUnavailable) as caught:
        client.send(**SMS)

    text = str(caught.value)
    assert text.startswith(f"RabbitMQ at 127.0.0.1:{port}: ")
    assert "Connection refused" in text
    assert "s3cret-pw" not in text and "\n" not in text


def test_four_threads_on_one_client_each_message_arrives_once(
    client: SmegClient, rabbit: Any, send_queue: str
) -> None:
    sent: list[str] = []
    errors: list[BaseException] = []

    def sender(thread: int) -> None:
        try:
            for i in range(100):
                sent.append(client.send("sms", "+447700900123", f"{thread}-{i}"))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=sender, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert errors == []
    got = drain(rabbit, send_queue, 400)
    assert sorted(json.loads(body)["message_id"] for _p, body in got) == sorted(sent)
    assert len(set(sent)) == 400
    assert rabbit.basic_get(send_queue, auto_ack=True)[0] is None


def test_a_connection_lost_between_sends_is_reopened(amqp_url: str, rabbit: Any, send_queue: str) -> None:
    proxy = TcpProxy()
    with SmegClient(proxy.url(), prefix=send_queue.removesuffix(".send")) as smeg:
        first = smeg.send(**SMS)
        proxy.restart(0)  # every connection through the proxy is closed
        second = smeg.send(**SMS)
    proxy.cut()

    got = drain(rabbit, send_queue, 2)
    assert [p.message_id for p, _b in got] == [first, second]


def test_a_stalled_broker_is_not_confirmed_within_the_timeout_and_the_same_id_can_go_again(
    amqp_url: str, rabbit: Any, send_queue: str
) -> None:
    proxy = TcpProxy()
    smeg = SmegClient(proxy.url(), prefix=send_queue.removesuffix(".send"), confirm_timeout=1)
    smeg.send(**SMS)
    proxy.stall()

    started = time.monotonic()
    with pytest.raises(NotConfirmed) as caught:
        smeg.send(**SMS, message_id="stalled-1")
    assert time.monotonic() - started < 5  # the connection was dropped, not politely closed
    assert caught.value.maybe_published is True and caught.value.unconfirmed == ["stalled-1"]

    proxy.stalled.clear()
    assert smeg.send(**SMS, message_id="stalled-1") == "stalled-1"
    smeg.close()
    proxy.cut()


def test_an_idle_client_dropped_by_the_broker_for_missed_heartbeats_sends_again(
    amqp_url: str, rabbit: Any, send_queue: str
) -> None:
    with SmegClient(f"{amqp_url}?heartbeat=1", prefix=send_queue.removesuffix(".send")) as smeg:
        first = smeg.send(**SMS)
        time.sleep(4)  # nothing answers the broker's heartbeats: it closes the connection
        second = smeg.send(**SMS)

    got = drain(rabbit, send_queue, 2)
    assert [p.message_id for p, _b in got] == [first, second]
