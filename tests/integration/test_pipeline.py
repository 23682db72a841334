"""The delivery pipeline in-process against the real RabbitMQ, with a scripted provider."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pika
import pytest

from adapters.event_store import MessageNotFoundError, MessageStore
from domain.message import DELIVERED, FAILED, Message
from smeg_actors.actors.messages import GetCounts
from smeg_actors.runtime.bootstrap import build_runtime
from smeg_actors.runtime.clock import Clock, utc_now
from smeg_actors.runtime.config import Settings
from smeg_actors.runtime.exit_codes import EXIT_ESCALATED
from smeg_actors.runtime.pipeline import Runtime
from tests.fakes import CrashingClock, FakeProvider
from tests.waiting import wait_until


class Pipeline:
    def __init__(self, runtime: Runtime, store: MessageStore, provider: FakeProvider) -> None:
        self.runtime, self.store, self.provider = runtime, store, provider

    def status(self, message_id: str) -> str | None:
        try:
            return self.store.get_by_message_id(message_id).status
        except MessageNotFoundError:
            return None

    def wait_final(self, message_id: str, timeout: float = 15) -> Message:
        wait_until(
            lambda: self.status(message_id) in (DELIVERED, FAILED),
            timeout,
            message=lambda: f"{message_id} is {self.status(message_id)}",
        )
        return self.store.get_by_message_id(message_id)

    def events(self, message_id: str) -> list[Any]:
        return self.store.history(Message.create_id(message_id))


@pytest.fixture
def start_pipeline(tmp_path: Path, amqp_url: str, prefix: str) -> Iterator[Callable[..., Pipeline]]:
    started: list[Runtime] = []
    stores: list[MessageStore] = []

    def start(provider: FakeProvider | None = None, clock: Clock = utc_now, **overrides: Any) -> Pipeline:
        url = f"sqlite:///{tmp_path}/smeg.db"
        options: dict[str, Any] = dict(
            database_url=url,
            amqp_url=amqp_url,
            queue_prefix=prefix,
            workers=4,
            backoff_initial=0.2,
            backoff_factor=3,
            backoff_max=5,
            max_attempts=3,
            projector="inline",  # in-process: the read models' effects are asserted right away
            heartbeat=10,
            prefetch=100,
            batch_size=50,
            restart_max=3,
            restart_period=5,
        )
        options.update(overrides)
        settings = Settings(**options)
        store = MessageStore(url)
        stores.append(store)
        provider = provider or FakeProvider()
        runtime = build_runtime(
            settings, store=store, providers={provider.name: provider}, clock=clock, redrive=False
        )
        runtime.start()
        started.append(runtime)
        return Pipeline(runtime, store, provider)

    yield start
    for runtime in started:
        runtime.stop(timeout=5)
    for store in stores:
        store.close()


def publish(channel: Any, prefix: str, body: bytes | dict[str, Any], **props: Any) -> None:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    channel.basic_publish("", f"{prefix}.send", raw, pika.BasicProperties(delivery_mode=2, **props))


def request(message_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "message_id": message_id,
        "channel": "sms",
        "to": "+447700900123",
        "body": "hello",
    } | extra


def drain(channel: Any, queue: str, timeout: float = 5) -> list[tuple[Any, bytes]]:
    """Every message now on ``queue`` (waits up to ``timeout`` for the first)."""

    def everything_there() -> list[tuple[Any, bytes]]:
        found: list[tuple[Any, bytes]] = []
        while (got := channel.basic_get(queue, auto_ack=True))[0] is not None:
            found.append((got[1], got[2]))
        return found

    return wait_until(everything_there, timeout, message=f"nothing on {queue}")


def test_delivers_a_request_and_acks_it(start_pipeline: Any, rabbit: Any, prefix: str) -> None:
    # Given
    pipeline = start_pipeline()
    # When
    publish(rabbit, prefix, request("d-1"), correlation_id="corr-1")
    # Then
    message = pipeline.wait_final("d-1")
    assert message.status == DELIVERED
    types = [type(e).__name__ for e in pipeline.events("d-1")]
    assert types == ["Received", "Attempted", "Delivered"]
    assert all(e.correlation_id == "corr-1" for e in pipeline.events("d-1"))
    declared = rabbit.queue_declare(f"{prefix}.send", passive=True)
    assert declared.method.message_count == 0


def test_backs_off_three_fold_then_delivers(start_pipeline: Any, rabbit: Any, prefix: str) -> None:
    # Given a provider that fails twice, then accepts
    provider = FakeProvider(scripts={"t-1": ["transient", "transient", "ok"]})
    pipeline = start_pipeline(provider, max_attempts=5)
    # When
    publish(rabbit, prefix, request("t-1"))
    # Then
    message = pipeline.wait_final("t-1")
    assert message.status == DELIVERED
    events = pipeline.events("t-1")
    backoffs = [e for e in events if isinstance(e, Message.BackedOff)]
    assert [b.delay_seconds for b in backoffs] == pytest.approx([0.2, 0.6])
    attempts = [e for e in events if isinstance(e, Message.Attempted)]
    for backoff, next_attempt in zip(backoffs, attempts[1:], strict=True):
        assert next_attempt.timestamp >= backoff.retry_at
        assert (next_attempt.timestamp - backoff.retry_at).total_seconds() < 1.0
    assert provider.calls["t-1"] == 3


def test_exhausted_message_fails_and_goes_to_failed_queue(
    start_pipeline: Any, rabbit: Any, prefix: str
) -> None:
    pipeline = start_pipeline(FakeProvider(scripts={"x-1": ["transient"]}))
    publish(rabbit, prefix, request("x-1"))
    message = pipeline.wait_final("x-1")
    assert message.status == FAILED and message.permanent is False and message.attempts == 3
    [(properties, body)] = drain(rabbit, f"{prefix}.failed")
    assert json.loads(body)["message_id"] == "x-1"
    assert properties.headers["x-smeg-permanent"] == "false"
    assert properties.headers["x-smeg-attempts"] == "3"
    assert properties.headers["x-smeg-reason"] == "http 503"


def test_permanent_error_fails_at_once(start_pipeline: Any, rabbit: Any, prefix: str) -> None:
    pipeline = start_pipeline(FakeProvider(scripts={"p-1": ["permanent"]}))
    publish(rabbit, prefix, request("p-1"))
    message = pipeline.wait_final("p-1")
    assert message.status == FAILED and message.permanent is True and message.attempts == 1
    [(properties, _body)] = drain(rabbit, f"{prefix}.failed")
    assert properties.headers["x-smeg-permanent"] == "true"


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (b"{not json", "not JSON"),
        (b"\xff\xfe", "UTF-8"),
        (json.dumps({"channel": "sms", "to": "12", "body": "x"}).encode(), "E.164"),
        (json.dumps(request("big", body="x" * 1601)).encode(), "body"),
        (json.dumps(request("prov", provider="nope")).encode(), "unknown provider"),
    ],
)
def test_rejects_bad_payloads_unchanged_and_keeps_running(
    start_pipeline: Any, rabbit: Any, prefix: str, payload: bytes, why: str
) -> None:
    pipeline = start_pipeline()
    publish(rabbit, prefix, payload)
    publish(rabbit, prefix, request("after-bad"))
    [(properties, body)] = drain(rabbit, f"{prefix}.rejected")
    assert body == payload
    assert why in properties.headers["x-smeg-error"]
    assert pipeline.wait_final("after-bad").status == DELIVERED


def test_duplicate_message_id_is_delivered_once(start_pipeline: Any, rabbit: Any, prefix: str) -> None:
    pipeline = start_pipeline()
    publish(rabbit, prefix, request("dup-1"))
    pipeline.wait_final("dup-1")
    publish(rabbit, prefix, request("dup-1", body="second copy"))
    publish(rabbit, prefix, request("dup-2"))
    pipeline.wait_final("dup-2")
    assert pipeline.provider.calls["dup-1"] == 1
    assert len(pipeline.events("dup-1")) == 3
    assert rabbit.queue_declare(f"{prefix}.send", passive=True).method.message_count == 0


def test_worker_crash_mid_attempt_is_restarted_and_message_delivered(
    start_pipeline: Any, rabbit: Any, prefix: str
) -> None:
    # Given a clock that crashes the first worker that asks it the time
    crashed = threading.Event()

    def should_crash() -> bool:
        if "WorkerActor" in threading.current_thread().name and not crashed.is_set():
            crashed.set()
            return True
        return False

    pipeline = start_pipeline(clock=CrashingClock(should_crash))
    # When
    publish(rabbit, prefix, request("c-1"))
    # Then
    assert pipeline.wait_final("c-1", timeout=20).status == DELIVERED
    assert crashed.is_set()
    counts = pipeline.runtime.supervisor.ask(GetCounts(), timeout=5)
    assert sum(counts.values()) >= 1


def test_batches_take_turns_between_the_intake_actors(start_pipeline: Any, rabbit: Any, prefix: str) -> None:
    # Given
    pipeline = start_pipeline(intake_actors=2)

    # When: more batches than intake actors (batches of at most 50)
    for i in range(300):
        publish(rabbit, prefix, request(f"t-{i}"))

    # Then: every request delivered once, and both actors recorded some
    for i in range(300):
        assert pipeline.wait_final(f"t-{i}").status == DELIVERED
    assert all(pipeline.provider.calls[f"t-{i}"] == 1 for i in range(300))
    children = pipeline.runtime.children
    counts = [children.get(name).ask(GetCounts(), timeout=5)["received"] for name in ("intake-0", "intake-1")]
    assert sum(counts) == 300
    assert min(counts) > 0


def test_an_intake_actor_crash_hands_its_batch_back_and_nothing_is_lost(
    start_pipeline: Any, rabbit: Any, prefix: str
) -> None:
    # Given a clock that crashes the first intake actor that asks it the time (before recording)
    crashed = threading.Event()

    def should_crash() -> bool:
        if "IntakeActor" in threading.current_thread().name and not crashed.is_set():
            crashed.set()
            return True
        return False

    pipeline = start_pipeline(clock=CrashingClock(should_crash), intake_actors=2)

    # When
    for i in range(120):
        publish(rabbit, prefix, request(f"i-{i}"))

    # Then: the crashed batch went back to the broker and came round again; each delivered once
    for i in range(120):
        assert pipeline.wait_final(f"i-{i}", timeout=20).status == DELIVERED
    assert crashed.is_set()
    assert all(pipeline.provider.calls[f"i-{i}"] == 1 for i in range(120))
    restarts = pipeline.runtime.supervisor.ask(GetCounts(), timeout=5)
    assert sum(n for name, n in restarts.items() if name.startswith("intake-")) == 1
    assert rabbit.queue_declare(f"{prefix}.send", passive=True).method.message_count == 0


def test_restart_intensity_exceeded_escalates_with_exit_5(
    start_pipeline: Any, rabbit: Any, prefix: str
) -> None:
    def always_in_workers() -> bool:
        return "WorkerActor" in threading.current_thread().name

    pipeline = start_pipeline(clock=CrashingClock(always_in_workers))
    for i in range(10):
        publish(rabbit, prefix, request(f"e-{i}"))
    assert pipeline.runtime.wait(timeout=30) == EXIT_ESCALATED
    assert pipeline.status("e-0") is not None


def test_events_exchange_receives_every_lifecycle_event_in_order(
    start_pipeline: Any, rabbit: Any, prefix: str
) -> None:
    # Given a subscriber bound to every message event
    rabbit.exchange_declare(f"{prefix}.events", exchange_type="topic", durable=True)
    queue = rabbit.queue_declare("", exclusive=True).method.queue
    rabbit.queue_bind(queue, f"{prefix}.events", routing_key="message.#")
    provider = FakeProvider(scripts={"ev-1": ["transient", "ok"]})
    start_pipeline(provider)
    # When
    publish(rabbit, prefix, request("ev-1"), correlation_id="corr-ev")
    # Then
    received: list[tuple[Any, Any, dict[str, Any]]] = []

    def five_received() -> bool:
        while len(received) < 5 and (got := rabbit.basic_get(queue, auto_ack=True))[0] is not None:
            received.append((got[0], got[1], json.loads(got[2])))
        return len(received) == 5

    wait_until(five_received, 15, message=lambda: f"received: {[m.routing_key for m, _p, _b in received]}")
    keys = [m.routing_key for m, _p, _b in received]
    assert keys == [
        "message.received",
        "message.attempted",
        "message.backedoff",
        "message.attempted",
        "message.delivered",
    ]
    bodies = [b for _m, _p, b in received]
    assert [b["version"] for b in bodies] == [1, 2, 3, 4, 5]
    assert all(b["message_id"] == "ev-1" and b["correlation_id"] == "corr-ev" for b in bodies)
    assert "body" not in bodies[0] and bodies[0]["to"] == "*********0123"
    ids = {p.message_id for _m, p, _b in received}
    assert len(ids) == 5


def test_auto_redrive_retries_exhausted_failures_once_the_provider_delivers_again(
    tmp_path: Path, amqp_url: str, prefix: str, rabbit: Any
) -> None:
    # Given a message that exhausts its attempts while the provider is down
    provider = FakeProvider(
        scripts={"down-1": ["transient", "transient", "transient", "ok"], "up-1": ["transient", "ok"]}
    )
    url = f"sqlite:///{tmp_path}/redrive.db"
    settings = Settings(
        database_url=url,
        amqp_url=amqp_url,
        queue_prefix=prefix,
        workers=2,
        backoff_initial=0.1,
        backoff_factor=2,
        max_attempts=3,
        redrive_rate=50,
        projector="inline",
        heartbeat=10,
    )
    store = MessageStore(url)
    runtime = build_runtime(settings, store=store, providers={provider.name: provider})
    runtime.start()
    try:
        pipeline = Pipeline(runtime, store, provider)
        publish(rabbit, prefix, request("down-1"))
        assert pipeline.wait_final("down-1").status == FAILED
        # When another message is delivered after a retry (the provider works again)
        publish(rabbit, prefix, request("up-1"))
        assert pipeline.wait_final("up-1").status == DELIVERED
        # Then the exhausted one is redriven from the failed queue and delivered
        wait_until(
            lambda: pipeline.status("down-1") == DELIVERED,
            20,
            0.1,
            message=lambda: f"down-1 is {pipeline.status('down-1')}, not redriven and delivered",
        )
        kinds = [type(e).__name__ for e in pipeline.events("down-1")]
        assert kinds.count("RetryRequested") == 1
        retry = next(e for e in pipeline.events("down-1") if isinstance(e, Message.RetryRequested))
        assert retry.requested_by == "auto-redrive"
    finally:
        runtime.stop(timeout=5)
        store.close()
