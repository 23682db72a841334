"""Fakes for the ports (tests only): a scriptable provider, a clock the test moves, a crashing clock."""

from __future__ import annotations

import threading
from collections import Counter, defaultdict
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Generic, TypeVar

from domain.ports import (
    OutboundMessage,
    PermanentDeliveryError,
    ProviderReceipt,
    TransientDeliveryError,
)

Script = list[str]  # "ok", "transient", "permanent", per attempt; the last entry repeats


class FakeProvider:
    """Delivers by script: ``scripts[message_id] = ["transient", "ok"]``; default ``ok``."""

    timeout = 1.0

    def __init__(self, name: str = "fake", scripts: dict[str, Script] | None = None) -> None:
        self.name = name
        self.scripts = scripts or {}
        self.calls: Counter[str] = Counter()
        self.keys: dict[str, list[str]] = defaultdict(list)
        self.delivered = threading.Event()
        self._lock = threading.Lock()
        self.healthy = True

    async def send(self, message: OutboundMessage) -> ProviderReceipt:
        return self.answer(message)

    def answer(self, message: OutboundMessage) -> ProviderReceipt:
        with self._lock:
            n = self.calls[message.message_id]
            self.calls[message.message_id] += 1
            self.keys[message.message_id].append(message.message_id)
        script = self.scripts.get(message.message_id, ["ok"])
        step = script[min(n, len(script) - 1)]
        if step == "transient":
            raise TransientDeliveryError("http 503", status_code=503)
        if step == "permanent":
            raise PermanentDeliveryError("http 400", status_code=400)
        if step == "crash":
            raise RuntimeError("provider bug")
        return ProviderReceipt(f"fake-{message.message_id}-{n + 1}")

    def check_health(self) -> None:
        if not self.healthy:
            from domain.ports import ProviderUnhealthyError

            raise ProviderUnhealthyError("fake provider is down")

    async def aclose(self) -> None:
        pass


class CrashingClock:
    """UTC now, except that it raises on the calls ``should_crash`` picks (crashes an actor)."""

    def __init__(self, should_crash: Callable[[], bool]) -> None:
        self.should_crash = should_crash

    def __call__(self) -> datetime:
        if self.should_crash():
            raise RuntimeError("injected crash")
        return datetime.now(timezone.utc)


Now = TypeVar("Now", float, datetime)


class FakeClock(Generic[Now]):
    """Now (a monotonic float or a UTC datetime), moved only by the test: never freezegun around
    actors (library-notes G3). ``sleep`` records the wait and moves the clock by it."""

    def __init__(self, now: Now) -> None:
        self.now: Now = now
        self.sleeps: list[float] = []

    def __call__(self) -> Now:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        if isinstance(self.now, datetime):
            self.now = self.now + timedelta(seconds=seconds)
        else:
            self.now = self.now + seconds
