"""How fast one process sends to one provider: its share of the rate limit, slowed on 429s, and
ramped up after the provider comes back. Pure: the caller passes monotonic seconds.

- ``rate_limit`` (messages/s) is the deployment's: each live process takes ``share`` of it.
- A 429 halves the pace at once (at most once a second: a batch's 429s are one signal), and a
  ``Retry-After`` pauses sending until it passes; the pace then grows back by a twentieth of
  what it was before every second (AIMD), and is lifted once it is past the limit (or twice the
  pace of the 429, where no limit is set).
- When a circuit closes (or a provider is enabled) held messages are released at 10 % of the
  limit (or of ``RAMP_RATE`` where none is set) for 10 s, then doubling every 10 s.

Sending is scheduled like GCRA: each admission takes the next free slot; one that must wait gets
a ticket for its slot (``admit`` returns the wait) and is admitted when it comes back for it, so
messages go in the order they first asked, and no two are promised the same slot.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field

#: The pace a provider without ``rate_limit`` is ramped up to after an outage (messages/s, shared).
RAMP_RATE = 100.0
RAMP_START = 0.1
RAMP_STEP = 10.0
#: Slowest pace AIMD goes down to (messages/s).
MIN_RATE = 0.5
#: Longest Retry-After honoured (seconds): a larger one is the provider's mistake, not a plan.
MAX_PAUSE = 300.0
#: A slot this close is taken at once: the scheduler's tick is coarser than this anyway.
LAG = 0.05
#: A ticket whose holder has not come back this long after its slot is given up.
TICKET_TTL = 30.0


@dataclass
class Pace:
    """One provider's pace in one process (``limit``: messages/s for the whole deployment)."""

    limit: float | None = None
    share: float = 1.0
    ramp_from: float | None = None
    adaptive: float | None = None
    adapted_at: float = 0.0
    ceiling: float = 0.0
    paused_until: float = 0.0
    next_free: float = 0.0
    tickets: dict[Hashable, float] = field(default_factory=dict)
    second: int = 0
    sent: int = 0
    sent_before: int = 0

    def rate(self, now: float) -> float | None:
        """Messages/s this process may send now; None: no limit. (A ramp or an AIMD pace that
        has run its course is dropped.)"""
        if self.ramp_from is not None and self._ramped(now) is None:
            self.ramp_from = None
        if self.adaptive is not None and self._adapted(now) is None:
            self.adaptive = None
        return self.rate_at(now)

    def rate_at(self, moment: float) -> float | None:
        """The pace at ``moment`` (now or later) as things stand: a ramp and an AIMD recovery are
        functions of time, so a slot promised for later is spaced at the pace of then."""
        rates = [r for r in (self._limit(), self._ramped(moment), self._adapted(moment)) if r is not None]
        return min(rates) if rates else None

    def _limit(self) -> float | None:
        return self.limit * self.share if self.limit is not None else None

    def _ramped(self, moment: float) -> float | None:
        if self.ramp_from is None:
            return None
        base = (self.limit if self.limit is not None else RAMP_RATE) * self.share
        steps = min(int(max(0.0, moment - self.ramp_from) // RAMP_STEP), 16)  # 2**16: long past base
        ramped = base * RAMP_START * 2**steps
        return ramped if ramped < base else None

    def _adapted(self, moment: float) -> float | None:
        if self.adaptive is None:
            return None
        grown = self.adaptive + self.ceiling / 40 * max(0.0, moment - self.adapted_at)
        return grown if grown < self.ceiling else None

    def admit(self, key: Hashable | None, now: float) -> float:
        """0.0: send now; else the seconds to wait (``key`` holds its place meanwhile)."""
        rate = self.rate(now)
        if rate is None and now >= self.paused_until:
            self._count(now)
            return 0.0
        if key is not None and key in self.tickets:
            slot = self.tickets[key]
            if slot > now + LAG:
                return slot - now
            if now < self.paused_until:  # (tickets are given up on a pause; belt and braces)
                return self.paused_until - now
            del self.tickets[key]
            self._count(now)
            return 0.0
        slot = max(now, self.next_free, self.paused_until)
        at_slot = self.rate_at(slot)
        self.next_free = slot + (1.0 / at_slot if at_slot else 0.0)
        if slot <= now + LAG:
            self._count(now)
            return 0.0
        if key is not None:
            self._expire(now)
            self.tickets[key] = slot
        return slot - now

    def throttled(self, now: float, retry_after: float | None) -> None:
        """The provider answered 429: halve the pace (once a second at most); pause for Retry-After.

        Promised slots are given up (their holders ask again when they come back), so none is
        kept inside the pause or at the old spacing; the pace grows back from the pause's end."""
        if retry_after is not None and retry_after > 0:
            self.paused_until = max(self.paused_until, now + min(retry_after, MAX_PAUSE))
        self.tickets.clear()
        self.next_free = max(now, self.paused_until)
        if self.adaptive is not None and now - self.adapted_at < 1.0:
            return
        current = self.rate(now) or max(float(self.sent_before), float(self.sent), 2 * MIN_RATE)
        if self.adaptive is None:
            self.ceiling = self.limit * self.share if self.limit is not None else 2 * current
        self.adaptive = max(MIN_RATE, current / 2)
        self.adapted_at = max(now, self.paused_until)

    def closed(self, now: float) -> None:
        """The provider takes attempts again after taking none: ramp up from 10 %."""
        self.ramp_from = now
        self.next_free = max(self.next_free, now)

    def _count(self, now: float) -> None:
        second = int(now)
        if second != self.second:
            self.sent_before = self.sent if second == self.second + 1 else 0
            self.second, self.sent = second, 0
        self.sent += 1

    def _expire(self, now: float) -> None:
        if len(self.tickets) > 1024:
            self.tickets = {k: slot for k, slot in self.tickets.items() if slot > now - TICKET_TTL}
