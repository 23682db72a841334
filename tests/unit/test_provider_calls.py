"""ProviderCalls: a batch's calls at once on one loop, bounded, timed out, closed."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import pytest

from domain.ports import OutboundMessage, PermanentDeliveryError, ProviderReceipt, TransientDeliveryError
from smeg_actors.actors.provider_calls import NO_ANSWER, ProviderCalls
from tests.waiting import wait_until


def outbound(message_id: str) -> OutboundMessage:
    return OutboundMessage(
        message_id=message_id, channel="sms", to="+447700900123", sender=None, body="hi", correlation_id="c"
    )


class Timed:
    """Answers after ``latency`` s (or by the id's prefix: ``slow-``, ``crash-``, ``bad-``)."""

    name = "timed"

    def __init__(self, latency: float = 0.0) -> None:
        self.latency = latency
        self.in_flight = 0
        self.most_in_flight = 0
        self.closed = False
        self.cancelled = 0

    async def send(self, message: OutboundMessage) -> ProviderReceipt:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(10 if message.message_id.startswith("slow-") else self.latency)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.in_flight -= 1
        if message.message_id.startswith("crash-"):
            raise RuntimeError("bug")
        if message.message_id.startswith("bad-"):
            raise PermanentDeliveryError("http 400", status_code=400)
        return ProviderReceipt(f"r-{message.message_id}")

    def check_health(self) -> None:
        pass

    async def aclose(self) -> None:
        self.closed = True


@pytest.fixture
def made() -> Iterator[list[ProviderCalls]]:
    loops: list[ProviderCalls] = []
    yield loops
    for calls in loops:
        calls.stop()


def start(made: list[ProviderCalls], provider: Timed, concurrency: int = 256) -> ProviderCalls:
    calls = ProviderCalls({"timed": provider}, concurrency)
    made.append(calls)
    return calls


def test_each_call_gets_its_own_result_in_order_with_its_latency(made: list[ProviderCalls]) -> None:
    calls = start(made, Timed(latency=0.01))

    results = calls.run([("timed", outbound(i)) for i in ("a", "crash-b", "bad-c", "d")], timeout=5)

    assert results[0][0] == ProviderReceipt("r-a")
    assert isinstance(results[1][0], TransientDeliveryError)
    assert results[1][0].reason == "provider error: RuntimeError"
    assert isinstance(results[2][0], PermanentDeliveryError)
    assert results[3][0] == ProviderReceipt("r-d")
    assert all(latency >= 10 for _, latency in results)


def test_calls_overlap_far_beyond_any_thread_count(made: list[ProviderCalls]) -> None:
    provider = Timed(latency=0.2)
    calls = start(made, provider, concurrency=4096)

    started = time.perf_counter()
    results = calls.run([("timed", outbound(f"m{i}")) for i in range(2000)], timeout=5)

    assert time.perf_counter() - started < 1.5  # 2,000 calls of 0.2 s each, all at once
    assert provider.most_in_flight == 2000
    assert all(isinstance(result, ProviderReceipt) for result, _ in results)


def test_the_concurrency_setting_bounds_the_calls_in_flight(made: list[ProviderCalls]) -> None:
    provider = Timed(latency=0.05)
    calls = start(made, provider, concurrency=2)

    started = time.perf_counter()
    calls.run([("timed", outbound(f"m{i}")) for i in range(6)], timeout=5)

    assert provider.most_in_flight == 2
    assert time.perf_counter() - started >= 0.15


def test_a_call_past_the_timeout_is_cancelled_and_counts_as_a_transient_timeout(
    made: list[ProviderCalls],
) -> None:
    provider = Timed()
    calls = start(made, provider)

    started = time.perf_counter()
    [(slow, _), (quick, _)] = calls.run(
        [("timed", outbound("slow-1")), ("timed", outbound("q"))], timeout=0.2
    )

    assert time.perf_counter() - started < 1.0
    assert isinstance(slow, TransientDeliveryError) and slow.reason == NO_ANSWER
    assert quick == ProviderReceipt("r-q")
    assert provider.cancelled == 1


def test_batches_from_many_threads_share_the_loop(made: list[ProviderCalls]) -> None:
    provider = Timed(latency=0.05)
    calls = start(made, provider)
    results: dict[int, list[object]] = {}

    def batch(index: int) -> None:
        answers = calls.run([("timed", outbound(f"t{index}-{i}")) for i in range(20)], timeout=5)
        results[index] = [result for result, _ in answers]

    threads = [threading.Thread(target=batch, args=(i,)) for i in range(16)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert time.perf_counter() - started < 1.0
    assert provider.most_in_flight > 20  # batches of different threads overlapped
    for index, answers in results.items():
        assert answers == [ProviderReceipt(f"r-t{index}-{i}") for i in range(20)]


def test_stop_cancels_calls_in_flight_and_closes_every_provider(made: list[ProviderCalls]) -> None:
    provider = Timed()
    calls = ProviderCalls({"timed": provider}, 8)
    answers: list[object] = []
    waiting = threading.Thread(
        target=lambda: answers.extend(calls.run([("timed", outbound("slow-1"))], 30)), daemon=True
    )
    waiting.start()
    wait_until(lambda: provider.in_flight, 5, 0.01, message="the slow call never started")

    calls.stop()

    assert provider.closed
    assert provider.cancelled == 1
    waiting.join(5)
    assert not waiting.is_alive()
    [(result, _)] = answers  # the waiting worker gets an answer, not an exception
    assert isinstance(result, TransientDeliveryError) and result.reason == NO_ANSWER


def test_latency_is_the_providers_not_the_wait_for_a_slot(made: list[ProviderCalls]) -> None:
    calls = start(made, Timed(latency=0.1), concurrency=1)

    results = calls.run([("timed", outbound("first")), ("timed", outbound("second"))], timeout=5)

    assert [round(latency, -2) for _, latency in results] == [100, 100]


def test_after_stop_the_loop_is_closed_and_a_batch_gets_no_answer_at_once() -> None:
    calls = ProviderCalls({"timed": Timed()}, 8)
    calls.stop()
    calls.stop()  # twice is harmless

    started = time.perf_counter()
    [(result, _)] = calls.run([("timed", outbound("late"))], timeout=5)

    assert time.perf_counter() - started < 0.5
    assert isinstance(result, TransientDeliveryError) and result.reason == NO_ANSWER
    assert calls.loop.is_closed()
