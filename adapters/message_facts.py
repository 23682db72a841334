"""What the statistics projections need to know about an event's message, kept while it is in
progress: its channel, when it was received, the provider of its latest attempt, where it stands
(its outcome so far, and under which provider) and whether it is a canary.

Held in memory and recovered from the message's own earlier events (``History``) after a
restart, an eviction or a rolled-back batch: the history is immutable, so no table of our own
has to keep these facts. This is the projections' hot path (every event of the log passes
here once per statistics read model): events are told apart by their class through one dict
lookup, and messages are keyed by their id's integer (``UUID.__hash__`` is Python code).
Imports the domain only (and ``History``, a type, for checking).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from itertools import islice
from typing import TYPE_CHECKING, Any
from uuid import UUID

from eventsourcing.domain import DomainEvent

from domain.canary import is_canary
from domain.message import Message

if TYPE_CHECKING:
    from adapters.projection_runner import History

#: A message's outcome so far, as the outcome columns of ``delivery_stats_minutely`` name it.
PENDING = "msg_pending"
DELIVERED_FIRST = "msg_delivered_first"
DELIVERED_RETRIED = "msg_delivered_retried"
FAILED_PERMANENT = "msg_failed_permanent"
FAILED_EXHAUSTED = "msg_failed_exhausted"
OUTCOMES = (DELIVERED_FIRST, DELIVERED_RETRIED, FAILED_PERMANENT, FAILED_EXHAUSTED, PENDING)

#: What an event is to a counter (``kind_of``): one small int per event class of the message.
OTHER, RECEIVED, ATTEMPTED, BACKED_OFF, DELIVERED, FAILED, HELD, RETRY_REQUESTED = range(8)
_CLASSES = (
    (Message.Received, RECEIVED),
    (Message.Attempted, ATTEMPTED),
    (Message.BackedOff, BACKED_OFF),
    (Message.Delivered, DELIVERED),
    (Message.Failed, FAILED),
    (Message.Held, HELD),
    (Message.RetryRequested, RETRY_REQUESTED),
)
#: Each event class's kind (``kind_of`` adds a subclass the first time it meets one).
KINDS: dict[type, int] = dict(_CLASSES)
#: The kinds after which a message may stand elsewhere (another outcome or provider).
MOVING = frozenset({RECEIVED, ATTEMPTED, DELIVERED, FAILED, HELD, RETRY_REQUESTED})


def kind_of(event: DomainEvent) -> int:
    """The event's kind (``OTHER`` for events no counter looks at, ``Archived`` say)."""
    cls = type(event)
    kind = KINDS.get(cls)
    if kind is None:  # a subclass (never seen so far): learn it once
        kind = KINDS[cls] = next((k for base, k in _CLASSES if isinstance(event, base)), OTHER)
    return kind


@dataclass(slots=True)
class Facts:
    """A message as a counter sees it, as of its event ``version``."""

    version: int
    channel: str
    received_at: datetime | None
    #: The provider of its latest attempt ('' before the first).
    provider: str
    ended: bool = False
    #: A synthetic request of the canary: the reports leave it out.
    canary: bool = False
    #: Where it stands: one of ``OUTCOMES``.
    outcome: str = PENDING
    #: The provider it is counted under by outcome: of its latest attempt, else the one it was
    #: held for, else the one requested ('' when none of these is known yet).
    handler: str = ""


class MessageFacts:
    """Each in-progress message's facts, in memory; recovered from its own history when missing.

    An entry is trusted only if it is as of the version just before the message's first event in
    the batch. Otherwise — after a restart, an eviction, or a batch that was folded and then
    rolled back — the message's earlier events are read from the store (``history``) and folded.
    Between batches, entries of messages that ended (Delivered, or Failed: only a rare
    RetryRequested can follow, and then the history is read) are dropped, and the oldest go when
    more than ``capacity`` remain; never during a batch, whose entries were checked by ``load``.
    """

    def __init__(self, capacity: int = 200_000) -> None:
        #: Facts by the message id's integer.
        self.known: dict[int, Facts] = {}
        self.ended: list[int] = []
        self.capacity = capacity

    def load(self, events: Sequence[DomainEvent], history: History) -> dict[int, int]:
        """Make sure every message of ``events`` is known as of just before its first event here.

        Returns:
            Each message's first version in ``events``, by its id's integer.
        """
        self._evict()
        first: dict[int, int] = {}
        for event in events:
            first.setdefault(event.originator_id.int, event.originator_version)
        known = self.known
        missing = [
            key
            for key, version in first.items()
            if version > 1 and ((facts := known.get(key)) is None or facts.version != version - 1)
        ]
        if missing:
            for key in missing:
                known.pop(key, None)
            for uuid, earlier in history([UUID(int=key) for key in missing]).items():
                for event in earlier:
                    if event.originator_version >= first[uuid.int]:
                        break
                    self.observe(event, kind_of(event))
        return first

    def standing(self, first: dict[int, int]) -> dict[int, tuple[str, str] | None]:
        """Where each message of a batch stands before it (``first``: what ``load`` returned):
        (handler, outcome); None for a message received in the batch (what memory holds of it
        then is a fold that was rolled back)."""
        known = self.known
        return {
            key: (facts.handler, facts.outcome)
            if version > 1 and (facts := known.get(key)) is not None
            else None
            for key, version in first.items()
        }

    def get(self, key: UUID) -> Facts | None:
        """The facts of a message as of its latest event folded (None before its Received)."""
        return self.known.get(key.int)

    def observe(self, event: DomainEvent, kind: int) -> Facts:
        """Fold the event (of ``kind``, see ``kind_of``) into its message's facts; return them
        as of that event."""
        key = event.originator_id.int
        fields: Any = event  # its class is known from ``kind``: no isinstance on the hot path
        if kind == RECEIVED:
            received = Facts(
                event.originator_version,
                fields.channel,
                utc(event.timestamp),
                "",
                canary=is_canary(fields.metadata),
                handler=fields.provider or "",
            )
            self.known[key] = received
            return received
        facts = self.known.get(key)
        if facts is None:  # no Received in its history (cannot happen while the log is whole)
            facts = self.known[key] = Facts(event.originator_version, "", None, "")
        facts.version = event.originator_version
        if kind == ATTEMPTED:
            facts.provider = facts.handler = fields.provider
        elif kind == DELIVERED:
            facts.outcome = DELIVERED_RETRIED if fields.attempt > 1 else DELIVERED_FIRST
            facts.ended = True
            self.ended.append(key)
        elif kind == FAILED:
            facts.outcome = FAILED_PERMANENT if fields.permanent else FAILED_EXHAUSTED
            facts.ended = True
            self.ended.append(key)
        elif kind == HELD:
            facts.handler = facts.provider or fields.provider
        elif kind == RETRY_REQUESTED:
            facts.ended, facts.outcome = False, PENDING
        return facts

    def _evict(self) -> None:
        known = self.known
        for key in self.ended:
            facts = known.get(key)
            if facts is not None and facts.ended:
                del known[key]
        self.ended.clear()
        if len(known) > self.capacity:
            for key in list(islice(known, len(known) - self.capacity // 2)):
                del known[key]


def utc(value: datetime) -> datetime:
    """``value`` in UTC (a naive value is taken as UTC)."""
    if value.tzinfo is timezone.utc:  # the store's timestamps: no work
        return value
    return value.astimezone(timezone.utc) if value.tzinfo else value.replace(tzinfo=timezone.utc)
