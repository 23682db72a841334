"""Failure groups: failed messages that failed the same way (provider, reason class, reason with
its particulars taken out), so a person can look at one group, retry it or archive it — the way
ServicePulse groups failed messages.

A group's id is stable: the same grouping gives the same id on every run and every node.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import datetime

EXHAUSTED, PERMANENT = "exhausted", "permanent"

#: Particulars that vary between messages failing for one cause: UUIDs, long hex, numbers,
#: quoted values, phone numbers (the order matters: a UUID holds hex and digits).
_PARTICULARS = (
    (re.compile(r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b"), "<id>"),
    (re.compile(r"'[^']*'|\"[^\"]*\""), "<value>"),
    (re.compile(r"\+?\b[0-9a-fA-F]{16,}\b"), "<id>"),
    (re.compile(r"(?<!http )(?<![\d.])\+?\d+(?:\.\d+)?"), "<n>"),  # an HTTP status stays: 400 is not 404
)
#: A normalised reason is cut to this many characters.
MAX_REASON = 200


def normalise_reason(reason: str | None) -> str:
    """The reason without its particulars: ``timeout after 5.0s`` and ``timeout after 3s`` are
    one group; an HTTP status is kept (``http 400`` and ``http 404`` are different causes)."""
    text = " ".join((reason or "").split())
    for pattern, placeholder in _PARTICULARS:
        text = pattern.sub(placeholder, text)
    return text[:MAX_REASON] or "(no reason)"


def reason_class(permanent: bool) -> str:
    return PERMANENT if permanent else EXHAUSTED


def group_id(provider: str, kind: str, reason: str) -> str:
    """Stable: a hash of the grouping (12 hex digits)."""
    return hashlib.sha256(f"{provider}\x00{kind}\x00{reason}".encode()).hexdigest()[:12]


@dataclass
class FailureGroup:
    """Failed messages that failed the same way."""

    provider: str
    reason_class: str
    reason: str
    count: int = 0
    first_failed_at: datetime | None = None
    last_failed_at: datetime | None = None
    sample_message_id: str = ""
    message_ids: list[str] = field(default_factory=list)

    @property
    def group_id(self) -> str:
        return group_id(self.provider, self.reason_class, self.reason)

    def add(self, message_id: str, failed_at: datetime | None) -> None:
        self.count += 1
        self.message_ids.append(message_id)
        if failed_at is not None and (self.last_failed_at is None or failed_at >= self.last_failed_at):
            self.last_failed_at, self.sample_message_id = failed_at, message_id
        if failed_at is not None and (self.first_failed_at is None or failed_at < self.first_failed_at):
            self.first_failed_at = failed_at
        self.sample_message_id = self.sample_message_id or message_id


def group_failures(
    rows: list[tuple[str, str | None, bool, str | None, datetime | None]],
) -> list[FailureGroup]:
    """Rows of (message_id, provider, permanent, reason, failed_at) → groups, largest first."""
    groups: dict[tuple[str, str, str], FailureGroup] = {}
    for message_id, provider, permanent, reason, failed_at in rows:
        key = (provider or "(none)", reason_class(permanent), normalise_reason(reason))
        group = groups.get(key)
        if group is None:
            group = groups[key] = FailureGroup(*key)
        group.add(message_id, failed_at)
    return sorted(groups.values(), key=lambda g: (-g.count, g.provider, g.reason_class, g.reason))


#: What stands for a provider's words that quote the message body.
WITHHELD = "(withheld: quotes the message)"
#: The most of a provider's own words kept in a failure reason.
MAX_DETAIL = 120
#: A run of digits that could be an address (phone numbers: 7 to 15 digits, maybe spaced).
_NUMBER_RUN = re.compile(r"\+?\d(?:[\d ().-]{4,}\d)")
#: A window of this many characters of the message body found in the provider's words: it quotes it.
_BODY_WINDOW = 12


def provider_detail(text: str | None, *, to: str, body: str) -> str | None:
    """The provider's own explanation of a refusal, fit for a reason (logs, events, the console):
    one line, at most ``MAX_DETAIL`` characters, the recipient and any number masked, and none
    at all when it quotes the message body (a body never reaches a log). None: nothing usable."""
    from domain.request import CONTROL_RE

    if not text:
        return None
    line = " ".join(CONTROL_RE.sub(" ", text).split())[: MAX_DETAIL * 4]
    if to:
        line = line.replace(to, "<to>")
    line = _NUMBER_RUN.sub("<number>", line)
    if _quotes(line, body):
        return WITHHELD
    line = line if len(line) <= MAX_DETAIL else line[: MAX_DETAIL - 1] + "…"
    return line or None


def _quotes(line: str, body: str) -> bool:
    if not body:
        return False
    flat = " ".join(body.split())
    if len(flat) < _BODY_WINDOW:  # a short body: quoted only as a whole word or words
        return len(flat) >= 3 and re.search(rf"(?<!\w){re.escape(flat)}(?!\w)", line) is not None
    return any(line[i : i + _BODY_WINDOW] in flat for i in range(max(0, len(line) - _BODY_WINDOW + 1)))
