"""The built-in alert rules' sensors, and the alerts' part of the actor tree.

Each sensor turns what smeg already keeps into one ``Observation`` per key:

- ``provider_down`` (per provider): seconds since its circuit left closed (however often it
  re-opened since), or since it was disabled, from the health view this process obeys;
- ``failures`` (per provider): messages that failed within ``window`` (``message_status``, whose
  failed rows are indexed by when they failed);
- ``retries_overdue`` (key ``all``): seconds the earliest backed-off retry is past its ``retry_at``
  (``message_status``);
- ``backlog_growing`` (key ``send``): seconds since the send queue last had no message waiting
  (a consumer that keeps up empties it again and again);
- ``projection_lag`` (per read model, and the events exchange): the age of the oldest event it
  has not applied (``read_models.follower_status``);
- ``restart_storm`` (key ``host/pid``): this process's actor restarts within ``window``;
- ``canary`` (key ``host/pid``, where this process sends the canary): canaries in a row not
  delivered within the rule's threshold (the SLO); two breach it.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine

from adapters.event_store import MessageStore
from adapters.queue_depth import QueueDepths
from adapters.rabbitmq import Topology
from adapters.schedule_view import oldest_backoff_due
from adapters.status_view import failed_since
from domain.alert import DEFAULT_RULES, AlertRule, Observation
from domain.canary import MISSES_TO_ALERT, CanaryLog
from domain.circuit import CLOSED
from domain.ports import AlertRepository, AlertSink
from smeg_actors.actors.alerts import Sensor
from smeg_actors.actors.provider_health import ProviderHealthView
from smeg_actors.actors.supervisor import RESTARTS, RestartLog
from smeg_actors.runtime.read_models import follower_status


@dataclass
class Alerting:
    """What the alert evaluator needs: its store, rules, sensors and sinks."""

    repository: AlertRepository
    rules: Mapping[str, AlertRule]
    sinks: list[AlertSink]
    sensors: dict[str, Sensor] = field(default_factory=dict)
    #: Why the broker or store is away, or None (``runtime.readiness``; set by ``serve``).
    outage: Callable[[], str | None] | None = None
    #: Why delivery is paused on purpose, or None (the flags; set by the runtime).
    paused: Callable[[], str | None] | None = None


def rules_from(tables: Mapping[str, Any]) -> dict[str, AlertRule]:
    """The built-in rules with ``[alerts.rules.NAME]`` applied; ValueError names a bad one."""
    unknown = sorted(set(tables) - set(DEFAULT_RULES))
    if unknown:
        raise ValueError(f"alert rule {unknown[0]!r} is not one of {', '.join(sorted(DEFAULT_RULES))}")
    rules = dict(DEFAULT_RULES)
    for name, table in tables.items():
        if not isinstance(table, Mapping):
            raise ValueError(f"alert rule {name}: must be a table")
        rules[name] = rules[name].configured(dict(table))
    return rules


def provider_down(view: ProviderHealthView, rule: AlertRule) -> Sensor:
    def see(now: datetime) -> list[Observation]:
        seen = []
        for name in view.names:
            health = view.snapshot.get(name)
            state = health.state if health is not None else CLOSED
            since = health.unavailable_since if health is not None else None
            value = (now - since).total_seconds() if since is not None else 0.0
            summary = f"provider {name} has been unavailable ({state}) for {value:.0f} s"
            labels = {"provider": name, "state": state}
            seen.append(Observation(rule.name, name, value, value >= rule.threshold, summary, labels))
        return seen

    return see


def failures(engine: Engine, rule: AlertRule) -> Sensor:
    def see(now: datetime) -> list[Observation]:
        counts = failed_since(engine, now - timedelta(seconds=rule.window))
        seen = []
        for provider, count in sorted(counts.items()):
            summary = f"{count} messages through {provider} failed within {rule.window:g} s"
            breached = count >= max(rule.threshold, 1)
            seen.append(
                Observation(rule.name, provider, float(count), breached, summary, {"provider": provider})
            )
        return seen

    return see


def retries_overdue(engine: Engine, rule: AlertRule) -> Sensor:
    def see(now: datetime) -> list[Observation]:
        due = oldest_backoff_due(engine)
        late = max(0.0, (now - due).total_seconds()) if due is not None else 0.0
        summary = f"the earliest pending retry is {late:.0f} s past its retry_at"
        return [Observation(rule.name, "all", late, late >= rule.threshold, summary)]

    return see


@dataclass
class BacklogAge:
    """The ``backlog_growing`` sensor: seconds since the send queue last held nothing."""

    depths: QueueDepths
    rule: AlertRule
    empty_at: datetime | None = None
    first: datetime | None = None

    def __call__(self, now: datetime) -> list[Observation]:
        """Clear only once it has seen the queue empty (a process started during a backlog cannot
        tell how old it is); breached once the age it can vouch for passes the threshold."""
        depth = self.depths.read().get("send", 0)
        self.first = self.first or now
        if depth == 0:
            self.empty_at = now
        age = (now - (self.empty_at or self.first)).total_seconds()
        breached = age >= self.rule.threshold
        judged = breached if breached or self.empty_at is not None else None
        summary = f"the send queue has not been empty for {age:.0f} s ({depth} waiting)"
        return [Observation(self.rule.name, "send", age, judged, summary, {"queue": "send"})]


def restart_storm(rule: AlertRule, log: RestartLog = RESTARTS, *, process: str = "") -> Sensor:
    """Per process (its own restarts; key ``host/pid``): another process's count is not this one's."""
    key = process or f"{socket.gethostname()}/{os.getpid()}"

    def see(now: datetime) -> list[Observation]:
        count = log.since(time.monotonic() - rule.window)
        summary = f"{count} actors restarted in {key} within {rule.window:g} s"
        return [Observation(rule.name, key, float(count), count >= rule.threshold, summary, {"process": key})]

    return see


def projection_lag(store: MessageStore, engine: Engine, rule: AlertRule) -> Sensor:
    """Per read model (and the events exchange): the age of its oldest unapplied event."""

    def see(now: datetime) -> list[Observation]:
        seen = []
        for follower in follower_status(store, engine, latest=0):
            if not follower.lag_known:
                continue
            lag, name = follower.lag_seconds, follower.name
            summary = f"{name} is {lag:.0f} s ({follower.lag_events} events) behind the event log"
            labels = {"projection": name}
            seen.append(Observation(rule.name, name, lag, lag >= rule.threshold, summary, labels))
        return seen

    return see


def canary_misses(canaries: CanaryLog, rule: AlertRule, *, process: str) -> Sensor:
    """Where this process sends the canary (key ``host/pid``): misses of the SLO in a row."""

    def see(now: datetime) -> list[Observation]:
        misses, last = canaries.misses, canaries.last_seconds
        took = f"; the latest delivered took {last:.1f} s" if last is not None else ""
        summary = f"{misses} canaries in a row missed the {rule.threshold:g} s SLO{took}"
        labels = {"process": process}
        return [Observation(rule.name, process, float(misses), misses >= MISSES_TO_ALERT, summary, labels)]

    return see


def sensors_for(
    rules: Mapping[str, AlertRule],
    *,
    view: ProviderHealthView,
    engine: Engine,
    amqp_url: str,
    prefix: str,
    store: MessageStore | None = None,
    canary: Any = None,
) -> dict[str, Sensor]:
    """Every enabled built-in rule's sensor (``canary``: a ``runtime.canary.Canary``, where this
    process sends one)."""
    made: dict[str, Sensor] = {
        "provider_down": provider_down(view, rules["provider_down"]),
        "failures": failures(engine, rules["failures"]),
        "retries_overdue": retries_overdue(engine, rules["retries_overdue"]),
        "backlog_growing": BacklogAge(QueueDepths(amqp_url, Topology(prefix)), rules["backlog_growing"]),
        "restart_storm": restart_storm(rules["restart_storm"]),
    }
    if store is not None:
        made["projection_lag"] = projection_lag(store, engine, rules["projection_lag"])
    if canary is not None:
        made["canary"] = canary_misses(canary.canaries, rules["canary"], process=canary.node)
    return {name: sensor for name, sensor in made.items() if rules[name].enabled}
