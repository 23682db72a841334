"""The queue reader's gauges: depths, and the send queue's age bound (since last seen empty)."""

from __future__ import annotations

from typing import Any

import pytest

from smeg_actors.runtime import metrics, queue_watch
from smeg_actors.runtime.queue_watch import QueueWatch


def test_the_send_queue_age_counts_from_when_it_was_last_seen_empty(monkeypatch: Any) -> None:
    now = [100.0]
    monkeypatch.setattr(queue_watch.time, "monotonic", lambda: now[0])
    watch = QueueWatch("amqp://guest:guest@127.0.0.1:5672/%2F", "unit-watch")

    def read(waiting: int, after: float) -> float:
        now[0] += after
        watch._oldest(waiting)
        value: float = metrics.send_queue_oldest._value.get()
        return value

    assert read(5, 0) == 0.0  # first read during a backlog: the age it can vouch for starts now
    assert read(7, 5) == pytest.approx(5.0)
    assert read(0, 5) == 0.0
    assert read(3, 5) == pytest.approx(5.0)  # waiting again: since the empty read
    assert read(1, 20) == pytest.approx(25.0)
