"""An intake actor that crashes with batches queued behind it loses none of them (real broker)."""

from __future__ import annotations

import threading
import time
from typing import Any

from domain.message import DELIVERED
from tests.fakes import CrashingClock
from tests.integration.test_pipeline import publish, request, start_pipeline
from tests.waiting import wait_until

__all__ = ["start_pipeline"]


def test_batches_queued_behind_a_crashing_intake_actor_are_all_delivered(
    start_pipeline: Any, rabbit: Any, prefix: str
) -> None:
    # Given one intake actor whose first batch stalls 1 s (batches pile up behind it), then crashes
    crashed = threading.Event()

    def should_crash() -> bool:
        if "IntakeActor" in threading.current_thread().name and not crashed.is_set():
            time.sleep(1.0)
            crashed.set()
            return True
        return False

    pipeline = start_pipeline(clock=CrashingClock(should_crash), intake_actors=1)

    # When many small batches arrive during the stall
    for i in range(300):
        publish(rabbit, prefix, request(f"q-{i}"))

    # Then every request is delivered once and the send queue drains: nothing stalls the window
    for i in range(300):
        assert pipeline.wait_final(f"q-{i}", timeout=30).status == DELIVERED
    assert crashed.is_set()
    assert all(pipeline.provider.calls[f"q-{i}"] == 1 for i in range(300))

    def ready() -> int:
        return int(rabbit.queue_declare(f"{prefix}.send", passive=True).method.message_count)

    wait_until(lambda: ready() == 0, 10, 0.1, message=lambda: f"{ready()} requests left on the send queue")
    # the consumer keeps going after the crash: a request published now is delivered too
    publish(rabbit, prefix, request("after-crash"))
    assert pipeline.wait_final("after-crash", timeout=15).status == DELIVERED
