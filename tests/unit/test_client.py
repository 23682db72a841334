"""SmegClient without a broker: validation by the domain's rules, and confirms from a fake broker.

The fake stands in at ``SmegClient._connect``: a connection whose channel records each publish
and answers it (ack, nack, return, or nothing) when the client next lets pika read.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pika
import pika.exceptions
import pytest

from adapters.rabbitmq import Topology
from domain.request import MAX_BODY, MAX_PROVIDER, parse_send_request
from smeg_actors import client as client_module
from smeg_actors.client import (
    BrokerUnavailable,
    InvalidRequest,
    NotConfirmed,
    NotRouted,
    SmegClient,
)

SMS: dict[str, Any] = {"channel": "sms", "to": "+447700900123", "body": "hi"}

TRACE_RULE = "traceparent must be a W3C trace context: 00-<32 hex>-<16 hex>-<2 hex>"


class FakeBroker:
    """Connections of a fake broker. ``answer`` says what each publish gets: "ack", "nack",
    "return" (a Basic.Return, then an ack, as RabbitMQ does) or "silent" (no confirm at all)."""

    def __init__(self, answer: Callable[[int], str] = lambda _n: "ack") -> None:
        self.answer = answer
        self.published: list[SimpleNamespace] = []
        self.connections: list[FakeConnection] = []
        self.refuse_connect = False

    def connect(self) -> FakeConnection:
        if self.refuse_connect:
            raise pika.exceptions.AMQPConnectionError("refused")
        connection = FakeConnection(self)
        self.connections.append(connection)
        return connection


class FakeConnection:
    def __init__(self, broker: FakeBroker) -> None:
        self.broker, self.is_open, self.lost, self.idle = broker, True, False, 0.0
        self.due: list[Callable[[], None]] = []
        self.impl = FakeChannel(self)

    def channel(self) -> SimpleNamespace:
        return SimpleNamespace(_impl=self.impl)

    def process_data_events(self, time_limit: float = 0) -> None:
        if self.lost:
            self.is_open = False
            raise pika.exceptions.StreamLostError("gone")
        if not self.due:
            self.idle += min(time_limit, 0.01)
            assert self.idle < 5, "the client would wait for ever for a confirm that never comes"
            time.sleep(min(time_limit, 0.01))
        due, self.due = self.due, []
        for callback in due:
            callback()

    def call_later(self, _delay: float, _callback: Callable[[], None]) -> None:
        pass

    def close(self) -> None:
        self.is_open = False


class FakeChannel:
    def __init__(self, connection: FakeConnection) -> None:
        self.connection, self.is_open, self.tag = connection, True, 0

    def add_on_return_callback(self, callback: Callable[..., None]) -> None:
        self.on_return = callback

    def confirm_delivery(
        self, ack_nack_callback: Callable[[Any], None], callback: Callable[[Any], None]
    ) -> None:
        self.on_confirm = ack_nack_callback
        self.connection.due.append(lambda: callback(None))

    def basic_publish(
        self, exchange: str, routing_key: str, body: bytes, properties: Any, mandatory: bool
    ) -> None:
        broker = self.connection.broker
        broker.published.append(
            SimpleNamespace(exchange=exchange, key=routing_key, body=body, props=properties)
        )
        broker.published[-1].mandatory = mandatory
        self.tag += 1
        tag, answer = self.tag, broker.answer(len(broker.published))
        if answer == "return":
            self.connection.due.append(lambda: self.on_return(self, None, properties, body))
        if answer != "silent":
            method = (pika.spec.Basic.Nack if answer == "nack" else pika.spec.Basic.Ack)(delivery_tag=tag)
            self.connection.due.append(lambda: self.on_confirm(SimpleNamespace(method=method)))


@pytest.fixture
def broker(monkeypatch: pytest.MonkeyPatch) -> FakeBroker:
    fake = FakeBroker()
    monkeypatch.setattr(SmegClient, "_connect", lambda _self: fake.connect())
    return fake


# --- validation: the domain's rules, in its words ------------------------------------------


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"to": "07700900123"}, "to must be an E.164 number for sms"),
        ({"channel": "fax"}, "channel must be 'sms' or 'im'"),
        ({"body": ""}, f"body must be a string of 1-{MAX_BODY} chars"),
        ({"body": "x" * (MAX_BODY + 1)}, f"body must be a string of 1-{MAX_BODY} chars"),
        ({"body": "a\x00b"}, "body must not contain control characters other than tab and newlines"),
        ({"body": "\ud800"}, "body contains an invalid unicode escape (lone surrogate)"),
        ({"message_id": "has space"}, "message_id must be 1-128 chars of [A-Za-z0-9._:-]"),
        ({"correlation_id": ""}, "correlation_id must be a string of 1-128 bytes"),
        ({"provider": "p" * (MAX_PROVIDER + 1)}, f"provider must be a string of 1-{MAX_PROVIDER} bytes"),
        ({"sender": "a\nb"}, "from must not contain control characters"),
        ({"metadata": {"k": 1}}, "metadata must be an object of strings"),
        ({"metadata": {1: "v"}}, "metadata keys must be strings"),
        ({"traceparent": "00-abc"}, TRACE_RULE),
        ({"traceparent": "00-" + "0" * 32 + "-" + "1" * 16 + "-01"}, TRACE_RULE),
        ({"traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01\n"}, TRACE_RULE),
    ],
)
def test_an_invalid_request_raises_invalid_request_with_the_domains_reason(
    broker: FakeBroker, fields: dict[str, Any], reason: str
) -> None:
    client = SmegClient()
    with pytest.raises(InvalidRequest) as caught:
        client.send(**(SMS | fields))
    assert caught.value.reason == reason
    assert str(caught.value) == reason
    assert caught.value.index is None
    assert broker.connections == []  # validated before any connection was opened


def test_send_many_with_one_bad_request_publishes_nothing(broker: FakeBroker) -> None:
    client = SmegClient()
    client.send(**SMS)  # connected: the bad batch below could have been published
    requests = [SMS, SMS | {"to": "not-a-number"}, SMS]

    with pytest.raises(InvalidRequest) as caught:
        client.send_many(requests)

    assert caught.value.index == 1
    assert str(caught.value) == "request 1: to must be an E.164 number for sms"
    assert len(broker.published) == 1


@pytest.mark.parametrize(
    ("request_", "reason"),
    [
        (SMS | {"from": "+15005550006"}, "unknown field: 'from'"),
        (("sms", "+447700900123", "hi"), "a request must be a mapping, not tuple"),
        (SMS | {"metadata": {"when": object()}}, "request is not JSON: "),
    ],
)
def test_send_many_refuses_what_is_not_a_request_by_sends_names(
    broker: FakeBroker, request_: Any, reason: str
) -> None:
    with pytest.raises(InvalidRequest, match=r"^request 0: ") as caught:
        SmegClient().send_many([request_])
    assert caught.value.reason.startswith(reason)
    assert broker.published == []


# --- what is published -----------------------------------------------------------------------


def test_send_publishes_the_validated_bytes_with_smegs_properties(broker: FakeBroker) -> None:
    before = int(time.time())
    message_id = SmegClient(prefix="p1").send(
        "im", "@alice", "héllo\n", sender="shop", provider="chat", metadata={"order": "42"}
    )

    [published] = broker.published
    assert uuid.UUID(hex=message_id).version == 4 and message_id == uuid.UUID(hex=message_id).hex
    assert (published.exchange, published.key, published.mandatory) == ("", "p1.send", True)
    request = parse_send_request(published.body)
    assert request.message_id == message_id
    assert request.correlation_id == message_id
    assert (request.channel, request.to, request.body) == ("im", "@alice", "héllo\n")
    assert (request.sender, request.provider, request.metadata) == ("shop", "chat", {"order": "42"})
    assert "héllo" in published.body.decode("utf-8")  # UTF-8, not \u escapes
    props = published.props
    assert (props.message_id, props.correlation_id) == (message_id, message_id)
    assert (props.delivery_mode, props.content_type, props.app_id) == (2, "application/json", "smeg-client")
    assert before <= props.timestamp <= time.time()
    assert props.headers is None  # no trace context given, none sent


def test_a_trace_context_goes_as_the_amqp_traceparent_header(broker: FakeBroker) -> None:
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    client = SmegClient()
    client.send("sms", "+447700900123", "hi", traceparent=parent)
    client.send_many([SMS, SMS | {"traceparent": parent}])
    headers = [p.props.headers for p in broker.published]
    assert headers == [{"traceparent": parent}, None, {"traceparent": parent}]


def test_send_many_returns_the_ids_in_order_and_keeps_given_ones(broker: FakeBroker) -> None:
    ids = SmegClient().send_many(
        [SMS | {"message_id": "order-1", "correlation_id": "req-9"}, SMS, SMS | {"message_id": "order-3"}]
    )

    assert ids[0] == "order-1" and ids[2] == "order-3" and len(ids[1]) == 32
    assert [json.loads(p.body)["message_id"] for p in broker.published] == ids
    assert [p.props.correlation_id for p in broker.published] == ["req-9", ids[1], "order-3"]
    assert SmegClient().send_many([]) == []


def test_the_queue_is_the_send_queue_smeg_declares() -> None:
    assert SmegClient(prefix="acme").queue == Topology("acme").send


# --- confirms ------------------------------------------------------------------------------


def test_a_nack_stops_the_batch_and_says_which_were_enqueued(
    broker: FakeBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client_module, "WINDOW", 1)  # wait for each confirm: the nack is seen at once
    broker.answer = lambda n: "nack" if n == 2 else "ack"
    requests = [SMS | {"message_id": f"m{i}"} for i in range(4)]

    with pytest.raises(NotConfirmed) as caught:
        SmegClient().send_many(requests)

    assert caught.value.confirmed == ["m0"]
    assert caught.value.unconfirmed == ["m1", "m2", "m3"]
    assert caught.value.maybe_published is False
    assert len(broker.published) == 2  # none after the nack
    assert "3 of 4 messages not confirmed" in str(caught.value)


def test_a_returned_message_is_not_routed(broker: FakeBroker) -> None:
    broker.answer = lambda _n: "return"

    with pytest.raises(NotRouted) as caught:
        SmegClient(prefix="nowhere").send(**SMS, message_id="m1")

    assert caught.value.unconfirmed == ["m1"] and caught.value.confirmed == []
    assert "no queue nowhere.send" in str(caught.value)


def test_a_confirm_that_never_comes_is_reported_as_maybe_published(broker: FakeBroker) -> None:
    broker.answer = lambda n: "silent" if n == 2 else "ack"
    client = SmegClient(confirm_timeout=0.2)

    started = time.monotonic()
    with pytest.raises(NotConfirmed) as caught:
        client.send_many([SMS | {"message_id": "a"}, SMS | {"message_id": "b"}])

    assert time.monotonic() - started < 2
    assert caught.value.maybe_published is True
    assert (caught.value.confirmed, caught.value.unconfirmed) == (["a"], ["b"])
    assert "same message_id is safe" in str(caught.value)
    assert not broker.connections[0].is_open  # owed confirms must not reach the next call
    broker.answer = lambda _n: "ack"
    client.send(**SMS, message_id="b")
    assert len(broker.connections) == 2


def test_a_connection_lost_while_confirms_are_owed_is_reported_not_retried(broker: FakeBroker) -> None:
    def lose_on_second(n: int) -> str:
        if n == 2:
            broker.connections[-1].lost = True
        return "ack"

    broker.answer = lose_on_second
    client = SmegClient()

    with pytest.raises(NotConfirmed, match="connection lost") as caught:
        client.send_many([SMS | {"message_id": "a"}, SMS | {"message_id": "b"}])

    assert caught.value.maybe_published is True
    assert caught.value.confirmed + caught.value.unconfirmed == ["a", "b"] and caught.value.unconfirmed
    assert len(broker.published) == 2  # reported, not published again
    broker.answer = lambda _n: "ack"
    client.send(**SMS)
    assert len(broker.connections) == 2


def test_a_connection_found_lost_is_reopened_once(broker: FakeBroker) -> None:
    client = SmegClient()
    client.send(**SMS)
    broker.connections[0].lost = True

    client.send(**SMS)

    assert len(broker.connections) == 2
    assert len(broker.published) == 2


def test_a_lost_connection_that_cannot_be_reopened_is_broker_unavailable(broker: FakeBroker) -> None:
    client = SmegClient("amqp://guest:sekrit@127.0.0.1:5672/%2F")
    client.send(**SMS)
    broker.connections[0].lost = True
    broker.refuse_connect = True

    with pytest.raises(BrokerUnavailable) as caught:
        client.send(**SMS)

    assert str(caught.value) == "RabbitMQ at 127.0.0.1:5672: AMQPConnectionError: refused"
    assert len(broker.published) == 1


def test_a_malformed_url_is_a_value_error_without_the_password() -> None:
    with pytest.raises(ValueError, match="invalid AMQP URL") as caught:
        SmegClient("amqp://guest:sekrit@127.0.0.1:notaport/%2F")
    assert "sekrit" not in str(caught.value)
    assert "sekrit" not in repr(SmegClient("amqp://guest:sekrit@10.0.0.1:5673/%2F"))


# --- importable with pika alone --------------------------------------------------------------

HEAVY = ("sqlalchemy", "pykka", "structlog", "eventsourcing", "adapters", "orjson", "psycopg", "httpx")


def test_importing_the_client_loads_neither_the_runtime_nor_its_libraries() -> None:
    code = (
        "import sys, smeg_actors.client\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}"
        " or m.startswith('smeg_actors.')"
        " and m not in ('smeg_actors.client', 'smeg_actors.client_errors')))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]"
