"""The backoff policy and the transient/permanent classification of provider errors.

Pure value objects and functions: randomness is a parameter, so tests need no mocks.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass

#: A provider's Retry-After is honoured up to this (a bogus year-long hint must not park a message).
MAX_RETRY_AFTER = 86_400.0


@dataclass(frozen=True, slots=True)
class BackoffPolicy:
    """delay(n) = min(initial × factor^(n−1), max_delay) ± jitter, for attempt n of a cycle."""

    initial: float = 60.0
    factor: float = 3.0
    max_delay: float = 3600.0
    max_attempts: int = 5
    jitter: float = 0.0

    def __post_init__(self) -> None:
        for name in ("initial", "factor", "max_delay", "jitter"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be a finite number")
        if self.initial < 0:
            raise ValueError("initial must be >= 0")
        if self.factor < 1:
            raise ValueError("factor must be >= 1")
        if self.max_delay < 0:
            raise ValueError("max_delay must be >= 0")
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        if not 0 <= self.jitter < 1:
            raise ValueError("jitter must be in [0, 1)")

    def delay(
        self,
        attempt: int,
        *,
        retry_after: float | None = None,
        rng: random.Random | None = None,
    ) -> float:
        """Seconds to wait after the ``attempt``-th (1-based, within a cycle) attempt failed.

        A provider's Retry-After raises the delay to at least that value, past the cap too:
        retrying sooner than the provider asked only earns another refusal.
        """
        if attempt < 1:
            raise ValueError("attempt is 1-based")
        base = self._capped(attempt)
        if self.jitter and base:
            spread = base * self.jitter
            base = (rng or random).uniform(base - spread, base + spread)
        if retry_after is not None and retry_after > base:
            return float(min(retry_after, MAX_RETRY_AFTER))
        return float(base)

    def _capped(self, attempt: int) -> float:
        delay = self.initial
        for _ in range(attempt - 1):
            delay *= self.factor
            if delay >= self.max_delay:
                return self.max_delay
        return min(delay, self.max_delay)

    def exhausted(self, attempt: int) -> bool:
        """True when the ``attempt``-th attempt of a cycle was the last one allowed."""
        return attempt >= self.max_attempts

    def as_dict(self) -> dict[str, float | int]:
        """The parameters, as recorded on each BackedOff event so an audit can tell why."""
        return asdict(self)


TRANSIENT_STATUS_CODES = frozenset({408, 425, 429})


def is_transient_status(status_code: int) -> bool:
    """408, 425, 429 and every 5xx are worth retrying; every other 4xx is the sender's fault."""
    return status_code in TRANSIENT_STATUS_CODES or 500 <= status_code <= 599
