"""The projector loop's pacing: read models first while they are behind, the exchange still served."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from smeg_actors.runtime import read_models


class Script:
    """Stands in for ``step_together``: returns the scripted batch sizes, then stops the loop."""

    def __init__(self, sizes: list[int], stop: threading.Event) -> None:
        self.sizes, self.stop, self.calls = list(sizes), stop, 0

    def __call__(self, *_args: Any, **_kwargs: Any) -> int:
        self.calls += 1
        if not self.sizes:
            self.stop.set()
            return 0
        return self.sizes.pop(0)


class Exchange:
    def __init__(self) -> None:
        self.turns: list[float] = []

    def publish_pending(self) -> int:
        self.turns.append(time.monotonic())
        return 0


def run(monkeypatch: pytest.MonkeyPatch, sizes: list[int], **pacing: float) -> tuple[Exchange, float]:
    stop = threading.Event()
    monkeypatch.setattr(read_models, "step_together", Script(sizes, stop))
    exchange = Exchange()
    started = time.monotonic()
    read_models.run_forever(None, [], exchange, stop, **pacing)  # type: ignore[arg-type]
    return exchange, time.monotonic() - started


def test_while_the_read_models_are_behind_the_exchange_gets_one_turn_per_deferral(monkeypatch):
    # When: ten full batches in a row (the read models behind), each taking no time
    exchange, _took = run(monkeypatch, [2000] * 10, gather=500, linger=0.05, defer=60.0)

    # Then: the exchange had its first turn, then waited; it is served again once they caught up
    assert len(exchange.turns) == 2


def test_when_the_read_models_keep_up_the_exchange_gets_a_turn_every_batch(monkeypatch):
    exchange, _took = run(monkeypatch, [10, 10, 10], gather=500, linger=0.0, defer=60.0)

    assert len(exchange.turns) == 4


def test_small_batches_linger_so_that_the_next_one_is_larger(monkeypatch):
    _exchange, took = run(monkeypatch, [10, 10, 10], gather=500, linger=0.1, defer=60.0)

    assert took >= 0.3


def test_full_batches_do_not_linger(monkeypatch):
    _exchange, took = run(monkeypatch, [2000] * 5, gather=500, linger=1.0, defer=60.0)

    assert took < 1.0
