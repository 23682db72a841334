"""Flags and kill switches: one ``Flags`` aggregate per deployment, in the same store as the
messages, so a switch is one row every process and node reads (each re-reads it every second).

A ``FlagSet`` records a flag's new value with who set it, why, and until when: past
``expires_at`` the flag is back to its default, with no event (``value_at``). Only the flags
named in ``KNOWN`` may be set, each with its type; the values are checked here (``ValueError``
naming the flag). Pure: the standard library and ``eventsourcing.domain`` only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate

from domain.request import CHANNELS

#: The scope of a flag that applies to the whole deployment (per-channel flags name their channel).
GLOBAL = "global"

DELIVERY_PAUSED = "delivery.paused"
REDRIVE_AUTO = "redrive.auto"
CANARY_ENABLED = "canary.enabled"

#: The longest ``--for``: a switch meant to be temporary should not outlive a year.
MAX_DURATION = timedelta(days=366)
DURATION_RE = re.compile(r"([1-9][0-9]{0,6})([smhd])")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
TRUE_WORDS = frozenset({"true", "on", "yes", "1"})
FALSE_WORDS = frozenset({"false", "off", "no", "0"})

#: The id namespace of the deployment's one ``Flags`` aggregate.
FLAGS_NAMESPACE = uuid5(NAMESPACE_URL, "smeg:flags")


class UnknownFlagError(ValueError):
    """No flag of that name exists."""


@dataclass(frozen=True, slots=True)
class FlagSpec:
    """A flag smeg knows: its default, its scope (``global`` or a channel) and what it does."""

    name: str
    default: bool
    scope: str
    meaning: str

    def parse(self, text: str) -> bool:
        """The value ``text`` spells (true/false, on/off, yes/no, 1/0), or ValueError naming the flag."""
        word = text.strip().lower()
        if word in TRUE_WORDS:
            return True
        if word in FALSE_WORDS:
            return False
        raise ValueError(f"{self.name}: expected true or false, not {text[:40]!r}")


def paused_flag(channel: str) -> str:
    """The name of the flag that pauses one channel: ``delivery.paused.sms``."""
    return f"{DELIVERY_PAUSED}.{channel}"


KNOWN: dict[str, FlagSpec] = {
    spec.name: spec
    for spec in (
        FlagSpec(
            DELIVERY_PAUSED,
            False,
            GLOBAL,
            "nothing is taken from the send queue and no retry is released",
        ),
        *(
            FlagSpec(
                paused_flag(channel),
                False,
                channel,
                f"{channel} requests are received and held, not attempted",
            )
            for channel in CHANNELS
        ),
        FlagSpec(REDRIVE_AUTO, True, GLOBAL, "the automatic redriver runs"),
        FlagSpec(CANARY_ENABLED, True, GLOBAL, "the canary is sent (where [canary] configures one)"),
    )
}


def spec_of(name: str) -> FlagSpec:
    """The flag named ``name``, or UnknownFlagError listing the known ones."""
    spec = KNOWN.get(name)
    if spec is None:
        raise UnknownFlagError(f"unknown flag: {name[:80]!r} (known: {', '.join(KNOWN)})")
    return spec


def parse_duration(text: str) -> timedelta:
    """``30s``, ``30m``, ``2h`` or ``1d`` (up to a year), or ValueError."""
    match = DURATION_RE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"not a duration: {text[:40]!r} (a whole number and s, m, h or d: 30m)")
    duration = timedelta(seconds=int(match[1]) * UNITS[match[2]])
    if duration > MAX_DURATION:
        raise ValueError(f"{text.strip()}: longer than {MAX_DURATION.days} days")
    return duration


@dataclass(frozen=True, slots=True)
class FlagValue:
    """A flag as last set: its value, who set it and why, when, and until when."""

    name: str
    value: bool
    scope: str
    by: str
    reason: str
    set_at: datetime
    expires_at: datetime | None

    def in_force(self, now: datetime) -> bool:
        return self.expires_at is None or now < self.expires_at


class Flags(Aggregate):
    """The deployment's flags as operators set them (one aggregate, a fixed id)."""

    class Started(Aggregate.Created):
        """smeg began to keep this deployment's flags."""

    class FlagSet(Aggregate.Event):
        """An operator set a flag: its value until ``expires_at`` (None: until set again)."""

        name: str
        value: bool
        scope: str
        by: str
        reason: str
        expires_at: datetime | None

        def apply(self, flags: Flags) -> None:
            flags.entries[self.name] = FlagValue(
                self.name, self.value, self.scope, self.by, self.reason, self.timestamp, self.expires_at
            )

    def __init__(self) -> None:
        self.entries: dict[str, FlagValue] = {}

    @staticmethod
    def create_id() -> UUID:
        return uuid5(FLAGS_NAMESPACE, "deployment")

    @classmethod
    def start(cls, *, now: datetime) -> Flags:
        return cls._create(cls.Started, id=cls.create_id(), timestamp=now)

    def set(
        self,
        name: str,
        value: bool,
        *,
        by: str,
        reason: str,
        now: datetime,
        expires_at: datetime | None = None,
    ) -> None:
        """Set a known flag (ValueError naming it: unknown, not a bool, no ``by`` or ``reason``, an
        expiry not in the future, or an expiry on the default, to which it would return anyway)."""
        spec = spec_of(name)
        if not isinstance(value, bool):
            raise ValueError(f"{name}: expected true or false, not {value!r}")
        if not by.strip() or not reason.strip():
            raise ValueError(f"{name}: who sets it and why must be given")
        if expires_at is not None and expires_at <= now:
            raise ValueError(f"{name}: expires_at {expires_at.isoformat()} is not after now")
        if expires_at is not None and value == spec.default:
            raise ValueError(
                f"{name}: {str(value).lower()} is its default, to which it returns when the time runs"
                " out; set it without an expiry"
            )
        self.trigger_event(
            self.FlagSet,
            timestamp=now,
            name=name,
            value=value,
            scope=spec.scope,
            by=by,
            reason=reason,
            expires_at=expires_at,
        )

    def current(self, name: str, now: datetime) -> FlagValue | None:
        """The setting in force for ``name`` (None: none, or it expired: the default holds)."""
        spec_of(name)
        entry = self.entries.get(name)
        return entry if entry is not None and entry.in_force(now) else None

    def value_at(self, name: str, now: datetime) -> bool:
        """The flag's value at ``now``: as last set, or its default before that or once expired."""
        entry = self.current(name, now)
        return entry.value if entry is not None else KNOWN[name].default


def values_at(flags: Flags | None, now: datetime) -> dict[str, bool]:
    """Every known flag's value at ``now`` (the defaults where nothing was ever set)."""
    if flags is None:
        return {name: spec.default for name, spec in KNOWN.items()}
    return {name: flags.value_at(name, now) for name in KNOWN}
