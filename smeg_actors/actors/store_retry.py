"""Riding out a short store outage: the intake and the workers retry a write for a grace period."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from domain.ports import StoreUnavailableError


def retry_until(
    operation: Callable[[], Any],
    *,
    grace: float,
    on_retry: Callable[[StoreUnavailableError, float], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Any:
    """Call ``operation`` until it stops raising StoreUnavailableError or ``grace`` seconds pass.

    Waits 0.1 s, 0.2 s, … up to 5 s between tries; re-raises the last error once the grace is spent.
    """
    deadline = clock() + grace
    delay = 0.1
    while True:
        try:
            return operation()
        except StoreUnavailableError as exc:
            if clock() + delay > deadline:
                raise
            if on_retry:
                on_retry(exc, delay)
            sleep(delay)
            delay = min(delay * 2, 5.0)
