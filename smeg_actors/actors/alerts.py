"""The alert evaluator: every few seconds it asks each sensor what it sees, applies the rules to
each alert (``domain.alert``) and tells the sinks when one fires or resolves.

Every delivery process runs one; the store's optimistic concurrency lets exactly one of them
record each transition, and only the process that recorded it tells the sinks. A sink that fails
is recorded (``AlertNotified(ok=False)``) and never holds up anything but this actor.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pykka
import structlog

from domain.alert import (
    FIRING,
    INHIBITED_BY_OUTAGE,
    INHIBITED_BY_PAUSE,
    RESOLVED,
    SETTLE_AFTER_OUTAGE,
    Alert,
    AlertRule,
    Observation,
)
from domain.ports import AlertRepository, AlertSink
from smeg_actors.actors.messages import Tick
from smeg_actors.actors.supervisor import Supervised
from smeg_actors.runtime.clock import Clock

log = structlog.get_logger(__name__)

#: What a sensor is: the observations of its rule now (one per key it watches; a key it cannot
#: judge yet, it leaves out).
Sensor = Callable[[datetime], Sequence[Observation]]

#: How often the recorded alerts are read again (an alert whose key no sensor sees any more, or
#: that another process raised, is resolved here too), and a firing alert is re-sent to sinks
#: that forget one not re-sent (Alertmanager's ``resolve_timeout``).
RESCAN_EVERY = 60.0
REPEAT_EVERY = 60.0


@dataclass
class Inhibitor:
    """A cause (``outage``: the broker or store away; ``pause``: an operator paused delivery)
    whose consequences, ``rules``, do not fire while it lasts and ``SETTLE_AFTER_OUTAGE`` s after:
    the cause is what is wrong, and is said elsewhere (``/readyz``, the pause's own warning)."""

    cause: str
    probe: Callable[[], str | None]
    rules: frozenset[str]
    until: float = 0.0
    reason: str | None = None

    def check(self, now: float) -> None:
        try:
            reason = self.probe()
        except Exception as exc:  # a probe that fails says as much as one that answers "down"
            reason = f"{self.cause} probe failed: {type(exc).__name__}"
        if reason:
            self.until = now + SETTLE_AFTER_OUTAGE
            if self.reason is None:
                rules = sorted(self.rules)
                log.warning("alerts_inhibited", cause=self.cause, reason=reason[:200], rules=rules)
            self.reason = reason
        elif self.reason is not None and now >= self.until:
            log.info("alerts_no_longer_inhibited", cause=self.cause)
            self.reason = None

    def holds(self, rule: str) -> bool:
        return self.reason is not None and rule in self.rules


class AlertEvaluatorActor(Supervised):
    """Evaluates every ``every`` seconds of ticks; see the module docstring."""

    def __init__(
        self,
        name: str,
        supervisor: pykka.ActorRef[Any] | None,
        *,
        repository: AlertRepository,
        rules: Mapping[str, AlertRule],
        sensors: Mapping[str, Sensor],
        sinks: Sequence[AlertSink],
        clock: Clock,
        every: float = 5.0,
        monotonic: Callable[[], float] = time.monotonic,
        outage: Callable[[], str | None] | None = None,
        paused: Callable[[], str | None] | None = None,
    ) -> None:
        super().__init__(name, supervisor)
        self.repository, self.rules, self.sinks, self.clock = repository, rules, sinks, clock
        self.sensors = {rule: sensor for rule, sensor in sensors.items() if rules[rule].enabled}
        self.every, self.monotonic = every, monotonic
        self.next_at = monotonic() + every
        #: Since when each (rule, key) has been seen clear (this process's memory).
        self.clear_since: dict[tuple[str, str], datetime] = {}
        #: The (rule, key) of alerts open (pending or firing) as this process last knew them, and
        #: those whose recorded state it has read (an alert another process, or an earlier run of
        #: this one, left open is resolved here too).
        self.open: set[tuple[str, str]] = set()
        self.read: set[tuple[str, str]] = set()
        self.failing: set[str] = set()
        self.next_rescan = 0.0
        self.repeated: dict[tuple[str, str], float] = {}
        #: Why the broker or the store is away, or delivery is paused (None: neither).
        self.inhibitors = [
            Inhibitor("outage", outage or (lambda: None), INHIBITED_BY_OUTAGE),
            Inhibitor("pause", paused or (lambda: None), INHIBITED_BY_PAUSE),
        ]
        #: Sinks that failed to hear of a change, per alert: (episode, status, sinks, next try).
        self.untold: dict[tuple[str, str], tuple[int, str, set[str], float]] = {}

    def on_receive(self, message: Any) -> Any:
        match message:
            case Tick():
                if self.monotonic() >= self.next_at:
                    self.next_at = self.monotonic() + self.every
                    self.evaluate()
            case _:
                log.warning("unknown_message_dropped", message=repr(message))
        return None

    def evaluate(self) -> None:
        """One round: every sensor, every alert it concerns. A sensor or the store failing skips
        that rule this round, logged once per outage (the rules that can still see go on)."""
        now = self.clock()
        for inhibitor in self.inhibitors:
            inhibitor.check(self.monotonic())
        if self.monotonic() >= self.next_rescan:
            self._rescan()
        for rule, sensor in self.sensors.items():
            try:
                seen = {o.key: o for o in sensor(now)}
                for key in {k for r, k in self.open if r == rule} - set(seen):
                    seen[key] = Observation(rule, key, 0.0, False, "no longer seen")
                for observation in seen.values():
                    self._apply(observation, now)
            except Exception as exc:
                if rule not in self.failing:
                    log.warning(
                        "alert_rule_not_evaluated", rule=rule, error=f"{type(exc).__name__}: {exc}"[:300]
                    )
                self.failing.add(rule)
                continue
            self.failing.discard(rule)
        self._repeat()
        self._retell(now)

    def _rescan(self) -> None:
        self.next_rescan = self.monotonic() + RESCAN_EVERY
        try:
            for where in self.repository.opened():
                if where[0] not in self.sensors:
                    continue
                alert = self.repository.get(*where)
                self.read.add(where)
                self._know(where, alert is not None and alert.is_open)
        except Exception as exc:
            log.warning("alerts_not_read", error=f"{type(exc).__name__}: {exc}"[:300])

    def _know(self, where: tuple[str, str], is_open: bool) -> None:
        """Note an alert open or not; a newly open one is first re-sent ``REPEAT_EVERY`` later."""
        if is_open:
            if where not in self.open:
                self.repeated.setdefault(where, self.monotonic())
            self.open.add(where)
        else:
            self.open.discard(where)
            self.repeated.pop(where, None)

    def _repeat(self) -> None:
        """Re-send firing alerts to the sinks that want it, every ``REPEAT_EVERY`` seconds."""
        sinks = [sink for sink in self.sinks if getattr(sink, "repeats", False)]
        for where in list(self.open) if sinks else []:
            if self.monotonic() - self.repeated.get(where, 0.0) < REPEAT_EVERY:
                continue
            self.repeated[where] = self.monotonic()
            try:
                alert = self.repository.get(*where)
                if alert is not None and alert.status == FIRING:
                    for sink in sinks:
                        sink.notify(alert)
            except Exception as exc:
                log.warning("alert_not_repeated", rule=where[0], key=where[1], error=str(exc)[:300])

    def _apply(self, seen: Observation, now: datetime) -> None:
        where = (seen.rule, seen.key)
        if seen.breached is None:  # the sensor cannot judge it yet: leave it as it is
            return
        if seen.breached and any(inhibitor.holds(seen.rule) for inhibitor in self.inhibitors):
            return  # it follows from an outage or a pause: neither raised nor kept clear
        if seen.breached:
            self.clear_since.pop(where, None)
        else:
            self.clear_since.setdefault(where, now)
            if where not in self.read:
                self.read.add(where)
                recorded_alert = self.repository.get(*where)
                self._know(where, recorded_alert is not None and recorded_alert.is_open)
            if where not in self.open:
                return
        rule, clear_since = self.rules[seen.rule], self.clear_since.get(where)
        alert, recorded = self.repository.change(
            seen.rule,
            seen.key,
            lambda a: a.observe(seen, rule, now=now, clear_since=clear_since),
            now=now,
        )
        self._know(where, alert.is_open)
        if recorded and (alert.status == FIRING or (alert.status == RESOLVED and alert.fired)):
            self._tell(alert, now)

    def _tell(self, alert: Alert, now: datetime, sinks: Sequence[AlertSink] | None = None) -> set[str]:
        """Tell ``sinks`` (all by default) of the alert's latest change; the names of those that
        failed are kept and tried again every ``REPEAT_EVERY`` s while the change is the latest."""
        failed = set()
        for sink in self.sinks if sinks is None else sinks:
            error: str | None = None
            try:
                sink.notify(alert)
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"[:300]
                failed.add(sink.name)
                log.warning("alert_not_notified", sink=sink.name, alert_id=alert.alert_id, error=error)
            try:
                self.repository.change(alert.rule, alert.key, _notified(sink.name, error, now), now=now)
            except Exception as exc:  # the next sinks are told all the same
                log.warning(
                    "alert_notice_not_recorded", sink=sink.name, error=f"{type(exc).__name__}: {exc}"[:300]
                )
        where = (alert.rule, alert.key)
        self.repeated[where] = self.monotonic()
        if failed:
            self.untold[where] = (alert.episode, alert.status, failed, self.monotonic() + REPEAT_EVERY)
        else:
            self.untold.pop(where, None)
        return failed

    def _retell(self, now: datetime) -> None:
        """Try again the sinks that failed to hear of a change (a webhook down when the alert
        fired would otherwise never hear of it), until they hear or the alert changes again."""
        for where, (episode, status, names, due) in list(self.untold.items()):
            if self.monotonic() < due:
                continue
            try:
                alert = self.repository.get(*where)
            except Exception as exc:
                log.warning("alert_not_retold", rule=where[0], key=where[1], error=str(exc)[:300])
                continue
            if alert is None or (alert.episode, alert.status) != (episode, status):
                self.untold.pop(where, None)  # a later change was (or will be) told in its turn
                continue
            self._tell(alert, now, [sink for sink in self.sinks if sink.name in names])


def _notified(sink: str, error: str | None, now: datetime) -> Callable[[Alert], bool]:
    def record(alert: Alert) -> bool:
        alert.notified_by(sink, ok=error is None, error=error, now=now)
        return True

    return record
