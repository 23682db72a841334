"""WorkerActor: begin/attempt/outcome commits, what it tells its siblings, and what it refuses to do."""

from __future__ import annotations

import asyncio
import queue
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any
from uuid import UUID

import pykka
import pytest

from domain.backoff import BackoffPolicy
from domain.message import BACKED_OFF, DELIVERED, FAILED, INTERRUPTED, Message
from domain.ports import Change, OutboundMessage, ProviderReceipt
from domain.request import SendRequest
from smeg_actors.actors.messages import (
    BatchFinished,
    DeliverBatch,
    ProviderRecovered,
    PublishFailed,
    Recover,
    ScheduleRetry,
    WorkItem,
)
from smeg_actors.actors.provider_calls import ProviderCalls
from smeg_actors.actors.supervisor import Children
from smeg_actors.actors.worker import WorkerActor
from tests.fakes import FakeClock, FakeProvider, InMemoryMessageStore
from tests.logcapture import captured_logs, json_lines

WAIT = 5.0
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)
POLICY = BackoffPolicy(initial=60, factor=3, max_delay=3600, max_attempts=3)
STALE_AFTER = 120.0


class Recorder(pykka.ThreadingActor):
    """Records every message told to it; ``"recorded"`` asks for them. Each arrival is also queued."""

    def __init__(self, arrived: queue.Queue[Any]) -> None:
        super().__init__()
        self.messages: list[Any] = []
        self.arrived = arrived

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, str) and message == "recorded":
            return list(self.messages)
        self.messages.append(message)
        self.arrived.put(message)
        return None


class BlockingProvider(FakeProvider):
    """Never answers until ``release`` is set (waiting as a coroutine, as a network call would)."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    async def send(self, message: OutboundMessage) -> ProviderReceipt:
        deadline = time.monotonic() + WAIT
        while not self.release.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return self.answer(message)


#: Every rig's provider-call loop, stopped after each test.
LOOPS: list[ProviderCalls] = []


@dataclass
class Rig:
    store: InMemoryMessageStore
    provider: FakeProvider
    clock: FakeClock = field(default_factory=lambda: FakeClock(T0))
    children: Children = field(default_factory=Children)
    finished: queue.Queue[Any] = field(default_factory=queue.Queue)
    store_lost: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.calls = ProviderCalls({"fake": self.provider}, concurrency=8)
        LOOPS.append(self.calls)
        self.children.set("dispatcher", Recorder.start(self.finished))
        for name in ("scheduler", "publisher", "redriver"):
            self.children.set(name, Recorder.start(queue.Queue()))

    def worker(
        self, name: str = "worker-0", *, call_timeout: float = 5.0, grace: float = 1.0
    ) -> pykka.ActorRef[Any]:
        return WorkerActor.start(
            name,
            None,
            store=self.store,
            providers={"fake": self.provider},
            default_provider="fake",
            policy=POLICY,
            calls=self.calls,
            children=self.children,
            clock=self.clock,
            stale_after=STALE_AFTER,
            call_timeout=call_timeout,
            grace=grace,
            on_store_lost=self.store_lost.append,
        )

    def deliver(self, worker: pykka.ActorRef[Any], *items: WorkItem) -> BatchFinished:
        """Tell the worker a batch and wait for its BatchFinished to reach the dispatcher."""
        worker.tell(DeliverBatch(items))
        finished = self.finished.get(timeout=WAIT)
        assert isinstance(finished, BatchFinished)
        return finished

    def told(self, name: str) -> list[Any]:
        """What ``name`` was told so far (call after the BatchFinished: the worker tells it last)."""
        messages: list[Any] = self.children.get(name).ask("recorded", timeout=WAIT)
        return messages

    def seed(self, *messages: Message) -> list[UUID]:
        outcomes = self.store.commit([Change(load=lambda m=m: m, cached=m) for m in messages])
        assert all(o.saved for o in outcomes)
        return [m.id for m in messages]

    def history(self, message_id: UUID) -> list[str]:
        return [type(event).__name__ for event in self.store.history(message_id)]


@pytest.fixture(autouse=True)
def stop_call_loops() -> Iterator[None]:
    yield
    while LOOPS:
        LOOPS.pop().stop()


@pytest.fixture
def store() -> InMemoryMessageStore:
    """The event store in memory (held to the real one by tests/integration/test_store_contract.py)."""
    return InMemoryMessageStore()


@pytest.fixture
def rig(store: InMemoryMessageStore) -> Rig:
    return Rig(store, FakeProvider())


# --- seeding ------------------------------------------------------------------------------------


def received(at: datetime = T0 - timedelta(minutes=1), **fields: Any) -> Message:
    request: dict[str, Any] = {
        "message_id": f"m-{uuid.uuid4().hex[:12]}",
        "channel": "sms",
        "to": "+441234560123",
        "body": "Your code is 123456",
        "correlation_id": f"c-{uuid.uuid4().hex[:8]}",
        "sender": "ACME",
        "metadata": {"campaign": "spring"},
    }
    request.update(fields)
    return Message.receive(now=at, **request)


def in_flight(attempted_at: datetime) -> Message:
    message = received(attempted_at - timedelta(seconds=1))
    message.start_attempt("fake", now=attempted_at)
    return message


def backed_off(failed_at: datetime, *, attempts: int = 1) -> Message:
    """A message whose ``attempts`` attempts, an hour apart, all failed; the last one at ``failed_at``."""
    message = received(failed_at - timedelta(hours=attempts))
    for n in reversed(range(attempts)):
        at = failed_at - timedelta(hours=n)
        message.start_attempt("fake", now=at)
        message.record_transient_failure("http 503", error="TransientDeliveryError", policy=POLICY, now=at)
    assert message.status == BACKED_OFF
    return message


def event(store: InMemoryMessageStore, message_id: UUID, kind: type[Any], nth: int = 0) -> Any:
    return [e for e in store.history(message_id) if isinstance(e, kind)][nth]


# --- deliveries ---------------------------------------------------------------------------------


def test_batch_of_received_messages_is_delivered_and_batch_finished_is_told(rig: Rig) -> None:
    # Given
    messages = [received() for _ in range(3)]
    ids = rig.seed(*messages)
    worker = rig.worker()
    # When
    finished = rig.deliver(worker, *(WorkItem(i) for i in ids))
    # Then
    assert finished == BatchFinished(tuple(ids))
    for message in messages:
        assert rig.history(message.id) == ["Received", "Attempted", "Delivered"]
        assert rig.provider.calls[message.message_id] == 1
        assert rig.store.get(message.id).provider_message_id == f"fake-{message.message_id}-1"
    attempted = event(rig.store, ids[0], Message.Attempted)
    assert (attempted.attempt, attempted.provider, attempted.timestamp) == (1, "fake", T0)
    assert rig.told("scheduler") == []
    assert rig.told("publisher") == []


def test_the_in_flight_gauge_counts_the_calls_under_way(rig: Rig, monkeypatch: Any) -> None:
    from smeg_actors.runtime import metrics

    during: list[float] = []
    answer = rig.provider.answer

    def watched(message: Any) -> Any:
        during.append(metrics.messages_in_flight._value.get())
        return answer(message)

    monkeypatch.setattr(rig.provider, "answer", watched)
    before = metrics.messages_in_flight._value.get()
    ids = rig.seed(*(received() for _ in range(3)))
    rig.deliver(rig.worker(), *(WorkItem(i) for i in ids))
    assert during == [before + 3] * 3
    assert metrics.messages_in_flight._value.get() == before


def test_transient_failure_backs_off_and_schedules_the_retry(rig: Rig) -> None:
    # Given
    message = received()
    rig.provider.scripts[message.message_id] = ["transient"]
    [message_id] = rig.seed(message)
    # When
    rig.deliver(rig.worker(), WorkItem(message_id))
    # Then
    assert rig.history(message_id) == ["Received", "Attempted", "BackedOff"]
    retry_at = T0 + timedelta(seconds=POLICY.initial)
    backed = event(rig.store, message_id, Message.BackedOff)
    assert (backed.retry_at, backed.reason, backed.status_code) == (retry_at, "http 503", 503)
    assert rig.told("scheduler") == [ScheduleRetry(message_id, retry_at)]
    assert rig.told("publisher") == []


def test_exhausted_attempts_fail_the_message_and_publish_it_with_headers(rig: Rig) -> None:
    # Given a message whose first two attempts (of three allowed) failed, retry due now
    message = backed_off(T0 - timedelta(minutes=10), attempts=2)
    rig.provider.scripts[message.message_id] = ["transient"]
    [message_id] = rig.seed(message)
    # When the third attempt fails too
    rig.deliver(rig.worker(), WorkItem(message_id))
    # Then
    assert rig.history(message_id)[-2:] == ["Attempted", "Failed"]
    failed = event(rig.store, message_id, Message.Failed)
    assert (failed.attempt, failed.permanent, failed.reason) == (3, False, "http 503")
    assert rig.told("scheduler") == []
    [published] = rig.told("publisher")
    assert isinstance(published, PublishFailed)
    headers = dict(published.headers)
    assert headers["x-smeg-reason"] == "http 503"
    assert headers["x-smeg-attempts"] == "3"
    assert headers["x-smeg-permanent"] == "false"
    assert published.request == SendRequest(
        message_id=message.message_id,
        channel="sms",
        to="+441234560123",
        body="Your code is 123456",
        correlation_id=message.correlation_id,
        sender="ACME",
        provider=None,
        metadata={"campaign": "spring"},
    )


def test_permanent_failure_fails_the_message_at_once(rig: Rig) -> None:
    # Given
    message = received()
    rig.provider.scripts[message.message_id] = ["permanent"]
    [message_id] = rig.seed(message)
    # When
    rig.deliver(rig.worker(), WorkItem(message_id))
    # Then
    assert rig.history(message_id) == ["Received", "Attempted", "Failed"]
    assert rig.store.get(message_id).permanent is True
    [published] = rig.told("publisher")
    headers = dict(published.headers)
    assert (headers["x-smeg-permanent"], headers["x-smeg-attempts"], headers["x-smeg-reason"]) == (
        "true",
        "1",
        "http 400",
    )
    assert rig.told("scheduler") == []


def test_provider_raising_an_unexpected_exception_is_a_transient_failure_and_the_worker_lives(
    rig: Rig,
) -> None:
    # Given
    message, after = received(), received()
    rig.provider.scripts[message.message_id] = ["crash"]
    rig.seed(message, after)
    worker = rig.worker()
    # When
    rig.deliver(worker, WorkItem(message.id))
    # Then
    assert rig.history(message.id) == ["Received", "Attempted", "BackedOff"]
    assert event(rig.store, message.id, Message.BackedOff).reason == "provider error: RuntimeError"
    assert rig.told("scheduler") == [ScheduleRetry(message.id, T0 + timedelta(seconds=POLICY.initial))]
    assert worker.is_alive()
    # And it goes on with the next batch
    rig.deliver(worker, WorkItem(after.id))
    assert rig.history(after.id) == ["Received", "Attempted", "Delivered"]


def test_provider_call_past_the_call_timeout_is_a_transient_timeout(
    store: InMemoryMessageStore,
) -> None:
    # Given a provider that does not answer
    provider = BlockingProvider()
    rig = Rig(store, provider)
    [message_id] = rig.seed(received())
    try:
        # When
        rig.deliver(rig.worker(call_timeout=0.05), WorkItem(message_id))
    finally:
        provider.release.set()
    # Then
    assert rig.history(message_id) == ["Received", "Attempted", "BackedOff"]
    assert event(rig.store, message_id, Message.BackedOff).reason == "timeout (no answer)"


def test_each_message_of_a_mixed_batch_gets_its_own_outcome(rig: Rig) -> None:
    # Given a batch whose first message may not be attempted yet
    busy = in_flight(T0 - timedelta(seconds=10))
    ok, flaky, bad = received(), received(), received()
    rig.provider.scripts[flaky.message_id] = ["transient"]
    rig.provider.scripts[bad.message_id] = ["permanent"]
    ids = rig.seed(busy, ok, flaky, bad)
    # When
    finished = rig.deliver(rig.worker(), *(WorkItem(i) for i in ids))
    # Then
    assert finished == BatchFinished(tuple(ids))
    assert [rig.store.get(i).status for i in ids[1:]] == [DELIVERED, BACKED_OFF, FAILED]
    assert rig.history(busy.id) == ["Received", "Attempted"]
    assert Recover((busy.id,)) in rig.told("scheduler")
    assert [type(m) for m in rig.told("publisher")] == [PublishFailed]


def test_delivery_after_an_earlier_failure_tells_the_redriver_the_provider_recovered(rig: Rig) -> None:
    # Given
    [message_id] = rig.seed(backed_off(T0 - timedelta(minutes=5)))
    # When
    rig.deliver(rig.worker(), WorkItem(message_id))
    # Then
    assert rig.store.get(message_id).status == DELIVERED
    assert rig.told("redriver") == [ProviderRecovered("fake")]


def test_first_attempt_delivered_tells_the_redriver_nothing(rig: Rig) -> None:
    # Given
    [message_id] = rig.seed(received())
    # When
    rig.deliver(rig.worker(), WorkItem(message_id))
    # Then
    assert rig.store.get(message_id).status == DELIVERED
    assert rig.told("redriver") == []


# --- what the worker refuses --------------------------------------------------------------------


def test_stale_in_flight_message_is_closed_as_interrupted_then_attempted(rig: Rig) -> None:
    # Given an attempt that began longer than stale_after ago and has no outcome
    message = in_flight(T0 - timedelta(seconds=STALE_AFTER + 80))
    [message_id] = rig.seed(message)
    # When
    rig.deliver(rig.worker(), WorkItem(message_id))
    # Then
    assert rig.history(message_id) == ["Received", "Attempted", "BackedOff", "Attempted", "Delivered"]
    interrupted = event(rig.store, message_id, Message.BackedOff)
    assert (interrupted.reason, interrupted.retry_at) == (INTERRUPTED, T0)
    assert event(rig.store, message_id, Message.Attempted, 1).attempt == 2
    assert rig.provider.calls[message.message_id] == 1


def test_interrupted_last_attempt_fails_the_message_and_publishes_it(rig: Rig) -> None:
    # Given a message whose third and last attempt was cut short long ago
    message = backed_off(T0 - timedelta(minutes=30), attempts=2)
    message.start_attempt("fake", now=T0 - timedelta(minutes=10))
    [message_id] = rig.seed(message)
    # When
    rig.deliver(rig.worker(), WorkItem(message_id))
    # Then
    assert rig.history(message_id)[-2:] == ["Attempted", "Failed"]
    assert rig.store.get(message_id).last_error == INTERRUPTED
    assert rig.provider.calls[message.message_id] == 0
    [published] = rig.told("publisher")
    assert dict(published.headers)["x-smeg-reason"] == INTERRUPTED


def test_young_in_flight_message_is_not_attempted_and_is_handed_to_recovery(rig: Rig) -> None:
    # Given an attempt that began less than stale_after ago
    message = in_flight(T0 - timedelta(seconds=10))
    [message_id] = rig.seed(message)
    # When
    finished = rig.deliver(rig.worker(), WorkItem(message_id))
    # Then
    assert finished == BatchFinished((message_id,))
    assert rig.history(message_id) == ["Received", "Attempted"]
    assert rig.provider.calls[message.message_id] == 0
    assert rig.told("scheduler") == [Recover((message_id,))]


def test_message_whose_retry_is_not_due_is_not_attempted_and_is_handed_to_recovery(rig: Rig) -> None:
    # Given a message backed off 10 s ago: its retry is due in 50 s
    message = backed_off(T0 - timedelta(seconds=10))
    [message_id] = rig.seed(message)
    # When
    rig.deliver(rig.worker(), WorkItem(message_id))
    # Then
    assert rig.history(message_id) == ["Received", "Attempted", "BackedOff"]
    assert rig.provider.calls[message.message_id] == 0
    assert rig.told("scheduler") == [Recover((message_id,))]


def test_message_missing_from_the_store_is_skipped_and_the_batch_still_finishes(rig: Rig) -> None:
    # Given
    missing = uuid.uuid4()
    # When
    finished = rig.deliver(rig.worker(), WorkItem(missing))
    # Then
    assert finished == BatchFinished((missing,))
    assert sum(rig.provider.calls.values()) == 0
    assert rig.told("scheduler") == []
    assert rig.told("publisher") == []


def test_two_workers_given_the_same_message_at_once_make_exactly_one_attempt(rig: Rig) -> None:
    # Given two workers, each holding its own copy of the same message at the same version
    message = received()
    [message_id] = rig.seed(message)
    first, second = rig.store.get(message_id), rig.store.get(message_id)
    worker_a, worker_b = rig.worker("worker-0"), rig.worker("worker-1")
    # When both are told to attempt it at once
    worker_a.tell(DeliverBatch((WorkItem(message_id, first),)))
    worker_b.tell(DeliverBatch((WorkItem(message_id, second),)))
    done = [rig.finished.get(timeout=WAIT), rig.finished.get(timeout=WAIT)]
    # Then the store's optimistic concurrency let only one of them begin
    assert done == [BatchFinished((message_id,))] * 2
    assert rig.history(message_id).count("Attempted") == 1
    assert rig.history(message_id)[-1] == "Delivered"
    assert rig.provider.calls[message.message_id] == 1
    assert rig.store_lost == []


# --- store outages -----------------------------------------------------------------------------


class StartedProvider(BlockingProvider):
    """A BlockingProvider that says when a call began (its attempt is then recorded)."""

    def __init__(self) -> None:
        super().__init__()
        self.started = threading.Event()

    async def send(self, message: OutboundMessage) -> ProviderReceipt:
        self.started.set()
        return await super().send(message)


def test_a_store_outage_within_the_grace_is_ridden_out_and_the_message_attempted_once(rig: Rig) -> None:
    # Given a message the worker holds (its cached copy), and a store whose next write fails
    message = received()
    [message_id] = rig.seed(message)
    commits = rig.store.commits
    rig.store.fail_next(1)
    # When
    finished = rig.deliver(rig.worker(), WorkItem(message_id, message))
    # Then the begin was tried again (reloaded: the failed write spent the cached copy, G1)
    assert finished == BatchFinished((message_id,))
    assert rig.history(message_id) == ["Received", "Attempted", "Delivered"]
    assert rig.provider.calls[message.message_id] == 1
    assert rig.store.commits - commits == 3
    assert rig.store_lost == []
    assert rig.told("scheduler") == []


def test_a_store_outage_while_recording_the_outcome_is_ridden_out_and_the_outcome_recorded_once(
    store: InMemoryMessageStore,
) -> None:
    # Given an attempt in progress, and a store whose next write fails
    provider = StartedProvider()
    rig = Rig(store, provider)
    [message_id] = rig.seed(received())
    worker = rig.worker()
    worker.tell(DeliverBatch((WorkItem(message_id),)))
    assert provider.started.wait(WAIT)
    store.fail_next(1)
    # When the provider answers
    provider.release.set()
    finished = rig.finished.get(timeout=WAIT)
    # Then
    assert finished == BatchFinished((message_id,))
    assert rig.history(message_id) == ["Received", "Attempted", "Delivered"]
    assert sum(provider.calls.values()) == 1
    assert rig.store_lost == []


def test_a_store_outage_past_the_grace_reports_the_store_lost_and_calls_no_provider(rig: Rig) -> None:
    # Given
    [message_id] = rig.seed(received())
    rig.store.fail_next(1)
    # When
    finished = rig.deliver(rig.worker(grace=0.0), WorkItem(message_id))
    # Then
    assert finished == BatchFinished((message_id,))
    assert [("injected outage" in why) for why in rig.store_lost] == [True]
    assert sum(rig.provider.calls.values()) == 0
    assert rig.history(message_id) == ["Received"]


# --- log lines ----------------------------------------------------------------------------------


@pytest.mark.parametrize("level", ["info", "warning"])
def test_each_finished_attempt_is_one_info_line_with_the_message_ids_and_a_masked_number(
    rig: Rig, level: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    from smeg_actors.actors import worker as worker_module

    with captured_logs(level, worker_module) as stream:
        message = received(to="+441234567890")
        [aggregate_id] = rig.seed(message)
        rig.deliver(rig.worker(), WorkItem(aggregate_id))
    lines = json_lines(stream)
    finished = [line for line in lines if line["event"] == "attempt_finished"]
    if level == "warning":
        assert finished == [] and lines == []
        return
    [line] = finished
    assert (line["message_id"], line["correlation_id"]) == (message.message_id, message.correlation_id)
    assert (line["status"], line["attempt"], line["provider"]) == ("delivered", 1, "fake")
    assert "1234567890" not in json.dumps(line) and "Your code" not in json.dumps(line)
