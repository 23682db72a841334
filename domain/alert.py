"""Alerts as events: one ``Alert`` aggregate per rule and key (a provider, a queue …), in the same
store, so every process evaluates the rules and the store's optimistic concurrency lets exactly
one of them record each transition.

An episode: the condition holds → ``AlertPending`` (skipped when the rule's ``for`` is 0); it held
for ``for`` seconds → ``AlertRaised`` (firing; the sinks are told); it was clear for
``clear_for`` seconds → ``AlertResolved``. A pending alert whose condition clears before ``for``
is resolved without having fired. The next breach begins a new episode on the same aggregate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate

PENDING, FIRING, RESOLVED = "pending", "firing", "resolved"
#: The largest threshold, window, for or clear_for accepted (a year of seconds).
MAX_SETTING = 366 * 86400.0
SEVERITIES = ("info", "warning", "critical")
ALERT_NAMESPACE = uuid5(NAMESPACE_URL, "smeg:alert")


@dataclass(frozen=True, slots=True)
class AlertRule:
    """One rule's settings (``[alerts.rules.NAME]``): ``threshold`` is the rule's own measure."""

    name: str
    threshold: float
    window: float = 300.0
    for_: float = 0.0
    clear_for: float = 60.0
    enabled: bool = True
    severity: str = "warning"

    def __post_init__(self) -> None:
        values = (self.threshold, self.window, self.for_, self.clear_for)
        if not all(math.isfinite(v) and 0 <= v <= MAX_SETTING for v in values):
            raise ValueError(
                f"alert rule {self.name}: threshold, window, for and clear_for must be 0 to {MAX_SETTING:g}"
            )
        if self.severity not in SEVERITIES:
            raise ValueError(f"alert rule {self.name}: severity must be one of {', '.join(SEVERITIES)}")

    def configured(self, values: dict[str, Any]) -> AlertRule:
        """This rule with a TOML table's values (``for`` is spelt as in Prometheus)."""
        known = {f.name for f in fields(self) if f.name != "name"} | {"for"}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"alert rule {self.name}: unknown setting {unknown[0]!r}")
        changes = {("for_" if key == "for" else key): value for key, value in values.items()}
        for key, value in changes.items():
            expected = bool if key == "enabled" else str if key == "severity" else (int, float)
            if isinstance(value, bool) != (expected is bool) or not isinstance(value, expected):
                raise ValueError(f"alert rule {self.name}: {key.rstrip('_')} has the wrong type")
        return AlertRule(**{**{f.name: getattr(self, f.name) for f in fields(self)}, **changes})


@dataclass(frozen=True, slots=True)
class Observation:
    """What a rule sees now for one key: its measure, and whether it breaches the threshold
    (None: this process cannot judge yet; the alert is left as it is)."""

    rule: str
    key: str
    value: float
    breached: bool | None
    summary: str
    labels: dict[str, str] = field(default_factory=dict)


class Alert(Aggregate):
    """One rule's alert for one key, across its episodes."""

    class Opened(Aggregate.Created):
        """smeg began to watch this rule for this key."""

        rule: str
        key: str

    class AlertPending(Aggregate.Event):
        """The condition holds; it fires if it still holds ``for`` seconds after ``since``."""

        severity: str
        summary: str
        labels: dict[str, str]
        value: float

        def apply(self, alert: Alert) -> None:
            alert.begin(self, PENDING)

    class AlertRaised(Aggregate.Event):
        """The condition held long enough: the alert fires, and the sinks are told."""

        severity: str
        summary: str
        labels: dict[str, str]
        value: float
        since: datetime

        def apply(self, alert: Alert) -> None:
            if alert.status != PENDING:
                alert.begin(self, FIRING)
            alert.status, alert.raised_at, alert.since, alert.fired = FIRING, self.timestamp, self.since, True
            alert.severity, alert.summary, alert.value = self.severity, self.summary, self.value

    class AlertNotified(Aggregate.Event):
        """A sink was told of the latest change (``ok`` False: it failed, ``error`` says how)."""

        sink: str
        ok: bool
        error: str | None

        def apply(self, alert: Alert) -> None:
            alert.notified[self.sink] = self.ok

    class AlertResolved(Aggregate.Event):
        """The condition was clear for ``clear_for`` seconds (``fired``: whether it had fired)."""

        value: float
        duration: float
        fired: bool

        def apply(self, alert: Alert) -> None:
            alert.status, alert.resolved_at, alert.value = RESOLVED, self.timestamp, self.value

    class AlertAcknowledged(Aggregate.Event):
        """A person saw it."""

        by: str

        def apply(self, alert: Alert) -> None:
            alert.acknowledged_by = self.by

    def __init__(self, rule: str, key: str) -> None:
        self.rule, self.key = rule, key
        self.status = RESOLVED
        self.episode = 0
        self.since: datetime | None = None
        self.raised_at: datetime | None = None
        self.resolved_at: datetime | None = None
        self.severity = "warning"
        self.summary = ""
        self.labels: dict[str, str] = {}
        self.value = 0.0
        self.acknowledged_by: str | None = None
        self.notified: dict[str, bool] = {}
        #: Whether this episode fired (a pending one may resolve without).
        self.fired = False

    def begin(self, event: AlertPending | AlertRaised, status: str) -> None:
        """A new episode (shared by the events that start one)."""
        self.episode += 1
        self.status, self.since, self.raised_at, self.resolved_at = status, event.timestamp, None, None
        self.severity, self.summary, self.labels, self.value = (
            event.severity,
            event.summary,
            dict(event.labels),
            event.value,
        )
        self.acknowledged_by, self.notified, self.fired = None, {}, False

    @staticmethod
    def create_id(rule: str, key: str) -> UUID:
        return uuid5(ALERT_NAMESPACE, f"{rule}\x00{key}")

    @classmethod
    def open(cls, rule: str, key: str, *, now: datetime) -> Alert:
        return cls._create(cls.Opened, id=cls.create_id(rule, key), rule=rule, key=key, timestamp=now)

    @property
    def alert_id(self) -> str:
        """What a person types to acknowledge this episode: the aggregate and the episode."""
        return f"{str(self.id)[:8]}-{self.episode}"

    @property
    def is_open(self) -> bool:
        return self.status in (PENDING, FIRING)

    def observe(
        self, seen: Observation, rule: AlertRule, *, now: datetime, clear_since: datetime | None
    ) -> bool:
        """Apply the rules of an episode to what was seen now; whether an event was recorded.

        ``clear_since``: since when the caller has seen the condition clear (this process's
        memory: a clearing is not an event, only its end is)."""
        if seen.breached is None:
            return False
        if seen.breached and self.status == RESOLVED:
            if rule.for_ > 0:
                self._pend(seen, rule, now)
            else:
                self._raise(seen, rule, now, since=now)
            return True
        if seen.breached and self.status == PENDING and self.since is not None:
            if (now - self.since).total_seconds() >= rule.for_:
                self._raise(seen, rule, now, since=self.since)
                return True
            return False
        if not seen.breached and self.status == PENDING:
            self._resolve(seen.value, now, fired=False)
            return True
        cleared_long_enough = (
            clear_since is not None and (now - clear_since).total_seconds() >= rule.clear_for
        )
        if not seen.breached and self.status == FIRING and cleared_long_enough:
            self._resolve(seen.value, now, fired=True)
            return True
        return False

    def acknowledge(self, by: str, *, now: datetime) -> None:
        self.trigger_event(self.AlertAcknowledged, timestamp=now, by=by)

    def notified_by(self, sink: str, *, ok: bool, error: str | None, now: datetime) -> None:
        self.trigger_event(self.AlertNotified, timestamp=now, sink=sink, ok=ok, error=error)

    def _pend(self, seen: Observation, rule: AlertRule, now: datetime) -> None:
        self.trigger_event(
            self.AlertPending,
            timestamp=now,
            severity=rule.severity,
            summary=seen.summary,
            labels=dict(seen.labels),
            value=seen.value,
        )

    def _raise(self, seen: Observation, rule: AlertRule, now: datetime, *, since: datetime) -> None:
        self.trigger_event(
            self.AlertRaised,
            timestamp=now,
            severity=rule.severity,
            summary=seen.summary,
            labels=dict(seen.labels),
            value=seen.value,
            since=since,
        )

    def _resolve(self, value: float, now: datetime, *, fired: bool) -> None:
        duration = (now - self.since).total_seconds() if self.since is not None else 0.0
        self.trigger_event(self.AlertResolved, timestamp=now, value=value, duration=duration, fired=fired)


class AlertIndex(Aggregate):
    """Every (rule, key) an alert was ever opened for: how ``smeg alerts`` finds them all
    (keys such as a process's ``host/pid`` cannot be known in advance)."""

    class Created(Aggregate.Created):
        """The first alert was opened."""

    class KeyAdded(Aggregate.Event):
        """An alert was opened for ``rule`` and ``key``."""

        rule: str
        key: str

        def apply(self, index: AlertIndex) -> None:
            index.keys.append((self.rule, self.key))

    def __init__(self) -> None:
        self.keys: list[tuple[str, str]] = []

    @staticmethod
    def create_id() -> UUID:
        return uuid5(ALERT_NAMESPACE, "index")

    @classmethod
    def start(cls, *, now: datetime) -> AlertIndex:
        return cls._create(cls.Created, id=cls.create_id(), timestamp=now)

    def add(self, rule: str, key: str, *, now: datetime) -> None:
        if (rule, key) not in self.keys:
            self.trigger_event(self.KeyAdded, timestamp=now, rule=rule, key=key)


#: Rules whose condition follows from the broker or the store being away (a backlog builds,
#: retries and canaries wait, projections fall behind, actors restart): while either is, and for
#: ``SETTLE_AFTER_OUTAGE`` seconds after, they do not fire (inhibition; the outage is what is
#: wrong, and the process says so: ``/readyz``, its exit, the log).
INHIBITED_BY_OUTAGE = frozenset(
    {"backlog_growing", "retries_overdue", "canary", "projection_lag", "restart_storm"}
)
SETTLE_AFTER_OUTAGE = 60.0
#: The rules that follow from an operator's pause (``delivery.paused``, or one channel's): the
#: backlog grows, retries and canaries wait on purpose. Inhibited while paused and for
#: ``SETTLE_AFTER_OUTAGE`` seconds after the resume; the rest (a provider down, failures, lag,
#: restarts) still fire.
INHIBITED_BY_PAUSE = frozenset({"backlog_growing", "retries_overdue", "canary"})

#: The built-in rules and their defaults: quiet on a healthy system.
DEFAULT_RULES = {
    rule.name: rule
    for rule in (
        AlertRule("provider_down", threshold=120.0, window=0.0, clear_for=30.0, severity="critical"),
        AlertRule("failures", threshold=1.0, window=900.0, clear_for=900.0),
        AlertRule("retries_overdue", threshold=120.0, window=0.0, for_=60.0, clear_for=60.0),
        AlertRule("backlog_growing", threshold=300.0, window=0.0, for_=60.0, clear_for=120.0),
        AlertRule("restart_storm", threshold=5.0, window=600.0, clear_for=60.0, severity="critical"),
        AlertRule("canary", threshold=120.0, window=0.0, clear_for=60.0, severity="critical"),
        AlertRule("projection_lag", threshold=300.0, window=0.0, for_=60.0, clear_for=60.0),
    )
}
