"""One thread that tells ``Tick`` to actors at fixed intervals (pykka has no timers)."""

from __future__ import annotations

import threading
import time

from smeg_actors.actors.messages import Tick
from smeg_actors.actors.supervisor import Children


class Ticker(threading.Thread):
    """Every ``interval`` seconds, tell each named child a Tick."""

    def __init__(self, children: Children, names: list[str], interval: float = 0.1) -> None:
        super().__init__(name="smeg-ticker", daemon=True)
        self.children, self.names, self.interval = children, names, interval
        self._halt = threading.Event()

    def run(self) -> None:
        tick = Tick()
        next_at = time.monotonic()
        while not self._halt.is_set():
            for name in self.names:
                self.children.tell_quietly(name, tick)
            next_at += self.interval
            self._halt.wait(max(0.0, next_at - time.monotonic()))

    def stop(self) -> None:
        self._halt.set()
