"""The one way a test waits for something: poll a condition until it holds, or fail after a
bounded time saying what was awaited and what was last seen. No wait in the tests may hang a run."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T],
    timeout: float = 10.0,
    interval: float = 0.05,
    message: str | Callable[[], str] = "condition not met",
) -> T:
    """Call ``predicate`` every ``interval`` seconds until it returns something truthy; return that.

    After ``timeout`` seconds raise AssertionError with ``message`` (a callable is called then, to
    describe the state at that moment) and the predicate's last value. An exception raised by
    ``predicate`` (say, an assertion that the process under test is still running) ends the wait
    at once.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            raise AssertionError(f"{text} (waited {timeout:g}s; last value: {value!r})")
        time.sleep(interval)
