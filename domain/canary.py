"""The canary: automated end-to-end monitoring. Every ``interval`` smeg sends itself a synthetic
request through its own send queue and measures publish → Delivered; a canary not delivered
within the SLO is a miss, and two misses in a row are what the ``canary`` alert fires on (one
miss may be a provider's slow moment; two are a broken path).

Canary requests carry ``CANARY_TAG`` in their metadata, so the reports leave them out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime

#: The metadata key that marks a synthetic request (its value: the node that sent it).
CANARY_TAG = "smeg.canary"
#: Misses in a row that breach the SLO.
MISSES_TO_ALERT = 2


def canary_message_id(node: str, sequence: int, at: datetime) -> str:
    """A message id no client would choose, unique per node and round (valid as a request id)."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "-", node)[:64]
    return f"smeg-canary.{safe}.{int(at.timestamp())}.{sequence}"


def is_canary(metadata: dict[str, str]) -> bool:
    return CANARY_TAG in metadata


@dataclass
class CanaryLog:
    """The canaries of one sender in flight, and what came of the latest ones.

    ``slo`` is the ``canary`` rule's threshold in seconds. A canary delivered within it clears the
    misses; one delivered late, or not at all ``slo`` seconds after it was sent, is a miss (then
    forgotten: a late delivery does not count twice).
    """

    slo: float
    waiting: dict[str, datetime] = field(default_factory=dict)
    misses: int = 0
    last_seconds: float | None = None
    delivered: int = 0
    missed: int = 0

    def sent(self, message_id: str, at: datetime) -> None:
        self.waiting[message_id] = at

    def settle(self, delivered: dict[str, datetime], now: datetime) -> None:
        """Apply what is known now: ``delivered`` maps the waiting canaries already delivered to
        when; the rest that are past the SLO are misses. Oldest first, so the last word is the
        latest canary's."""
        for message_id, sent_at in sorted(self.waiting.items(), key=lambda item: item[1]):
            at = delivered.get(message_id)
            if at is not None:
                self.last_seconds = max(0.0, (at - sent_at).total_seconds())
                del self.waiting[message_id]
                if self.last_seconds <= self.slo:
                    self.misses, self.delivered = 0, self.delivered + 1
                else:
                    self.misses, self.missed = self.misses + 1, self.missed + 1
            elif (now - sent_at).total_seconds() > self.slo:
                del self.waiting[message_id]
                self.misses, self.missed = self.misses + 1, self.missed + 1

    @property
    def breached(self) -> bool:
        return self.misses >= MISSES_TO_ALERT

    def overdue(self, now: datetime) -> float:
        """Seconds the oldest waiting canary has waited (0: none waits)."""
        oldest = min(self.waiting.values(), default=None)
        return max(0.0, (now - oldest).total_seconds()) if oldest is not None else 0.0
