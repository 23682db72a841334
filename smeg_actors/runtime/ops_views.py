"""The rows every operator surface shows: providers' health, alerts, the schedule and the flags,
built once here so that ``smeg … --json``, the admin API and the console answer with the same
objects (their keys are a contract), and the flag write both the CLI and the web make.

The web layer reads through this module rather than through the CLI's click commands. A builder
that opens the event store takes the opener as ``open_store``: the CLI passes its own, which
refuses a missing SQLite file and says why the store cannot be opened (exit 3); without one it is
``runtime.factory.open_store``.

Cheap to import (the standard library): every ``smeg`` command imports it; what a builder needs
beyond that it imports when it runs.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from adapters.event_store import MessageStore
    from adapters.schedule_view import Schedule
    from domain.alert import Alert
    from domain.flags import Flags
    from domain.provider_health import ProviderHealth
    from smeg_actors.runtime.config import Settings

#: Opens the event store the settings name.
StoreOpener = Callable[["Settings"], "MessageStore"]


def _opener(open_store: StoreOpener | None) -> StoreOpener:
    if open_store is not None:
        return open_store
    from smeg_actors.runtime.factory import open_store as open_configured_store

    return open_configured_store


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


# Providers (``smeg providers --json``, ``GET /api/providers``, the console).


def provider_rows(settings: Settings, *, open_store: StoreOpener | None = None) -> list[dict[str, Any]]:
    """One object per configured provider: ``name``, ``state``, ``failure_ratio``, ``held``,
    ``since`` (ISO 8601 UTC or null), ``open_until``, ``disabled_by``, ``disabled_reason``,
    ``rate_limit`` (messages/s for the deployment, or null) and ``fallback`` (names)."""
    from adapters.provider_health_store import ProviderHealthStore
    from adapters.status_view import held_counts
    from smeg_actors.runtime.factory import open_engine, rate_limits, routing_policy

    names = sorted(settings.provider_configs())
    limits, fallbacks = rate_limits(settings), routing_policy(settings).fallbacks
    store = _opener(open_store)(settings)
    engine = open_engine(settings)
    try:
        health = ProviderHealthStore(store)
        held = held_counts(engine)
        return [
            _provider_row(name, health.get(name), held.get(name, 0))
            | {"rate_limit": limits.get(name), "fallback": list(fallbacks.get(name, ()))}
            for name in names
        ]
    finally:
        engine.dispose()
        store.close()


def _provider_row(name: str, health: ProviderHealth | None, held: int) -> dict[str, Any]:
    return {
        "name": name,
        "state": health.state if health is not None else "closed",
        "failure_ratio": health.failure_ratio if health is not None else 0.0,
        "held": held,
        "since": _iso(health.state_since) if health is not None else None,
        "open_until": _iso(health.open_until) if health is not None else None,
        "disabled_by": health.disabled_by if health is not None else None,
        "disabled_reason": health.disabled_reason if health is not None else None,
    }


# Alerts (``smeg alerts --json``, ``GET /api/alerts``, the console).


def alert_rows(
    settings: Settings, *, everything: bool, open_store: StoreOpener | None = None
) -> list[dict[str, Any]]:
    """The open alerts (``everything``: resolved ones too) as ``--json`` lists them, newest first."""
    found = [a for a in _recorded_alerts(settings, open_store) if everything or a.is_open]
    return sorted((_alert_row(a) for a in found), key=lambda r: r["raised_at"] or "", reverse=True)


def acknowledge_alert(
    settings: Settings, alert_id: str, who: str, *, open_store: StoreOpener | None = None
) -> tuple[str, str] | None:
    """Record that ``who`` has seen the alert ``alert_id`` (as the lists show it): its (rule,
    key), or None when no recorded episode has that id."""
    from adapters.alert_store import AlertStore
    from smeg_actors.runtime.clock import utc_now

    store = _opener(open_store)(settings)
    try:
        repository = AlertStore(store)
        index = repository.index()
        for rule, key in index.keys if index is not None else []:
            alert = repository.get(rule, key)
            if alert is not None and alert.episode and alert.alert_id == alert_id:
                now = utc_now()
                repository.change(rule, key, _acknowledging(who, now), now=now)
                return rule, key
    finally:
        store.close()
    return None


def _acknowledging(who: str, now: datetime) -> Callable[[Alert], bool]:
    def record(alert: Alert) -> bool:
        alert.acknowledge(who, now=now)
        return True

    return record


def _recorded_alerts(settings: Settings, open_store: StoreOpener | None) -> list[Alert]:
    from adapters.alert_store import AlertStore

    store = _opener(open_store)(settings)
    try:
        alerts = AlertStore(store)
        index = alerts.index()
        keys = index.keys if index is not None else []
        return [a for rule, key in keys if (a := alerts.get(rule, key)) is not None and a.episode]
    finally:
        store.close()


def _alert_row(alert: Alert) -> dict[str, Any]:
    def iso(moment: datetime | None) -> str | None:
        return moment.isoformat().replace("+00:00", "Z") if moment is not None else None

    return {
        "alert_id": alert.alert_id,
        "rule": alert.rule,
        "key": alert.key,
        "status": alert.status,
        "severity": alert.severity,
        "summary": alert.summary,
        "value": alert.value,
        "raised_at": iso(alert.raised_at or alert.since),
        "resolved_at": iso(alert.resolved_at),
        "acknowledged_by": alert.acknowledged_by,
    }


# The schedule (``smeg schedule --json``, ``GET /api/schedule``, the console).


def read_schedule(
    settings: Settings, within: timedelta, provider: str | None, *, open_store: StoreOpener | None = None
) -> Schedule:
    """The schedule as the read model has it now."""
    from adapters.schedule_view import read_schedule as query_schedule
    from smeg_actors.runtime.clock import utc_now
    from smeg_actors.runtime.factory import open_engine

    _opener(open_store)(settings).close()  # a mistyped SQLite path: exit 3, and no empty file left behind
    engine = open_engine(settings)
    try:
        return query_schedule(engine, now=utc_now(), within=within, provider=provider)
    finally:
        engine.dispose()


def schedule_record(found: Schedule) -> dict[str, Any]:
    """The ``--json`` object (timestamps ISO 8601 UTC with ``Z``)."""
    oldest = found.oldest_held
    return {
        "due": [
            {"minute": schedule_time(item.minute), "provider": item.provider, "count": item.count}
            for item in found.due
        ],
        "held": dict(sorted(found.held.items())),
        "oldest_held": None
        if oldest is None
        else {"message_id": oldest.message_id, "since": schedule_time(oldest.since)},
    }


def schedule_time(moment: datetime) -> str:
    """A moment of the schedule as it shows them: ISO 8601 UTC to the second, with ``Z``."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# Flags (``smeg flags [set]``, ``/api/flags``, the console).


def read_flags(settings: Settings, *, open_store: StoreOpener | None = None) -> tuple[Flags | None, datetime]:
    """The flags as recorded (None: never set) and now, what ``flag_rows`` reads."""
    from adapters.flag_store import FlagStore
    from smeg_actors.runtime.clock import utc_now

    store = _opener(open_store)(settings)
    try:
        return FlagStore(store).get(), utc_now()
    finally:
        store.close()


def flag_rows(read: tuple[Flags | None, datetime]) -> list[dict[str, Any]]:
    """One object per known flag: ``name``, ``value`` (in force now), ``default``, ``scope``,
    ``by``, ``reason``, ``set_at`` and ``expires_at`` (ISO 8601 UTC; all four null while the
    default holds: never set, or the setting ran out)."""
    from domain.flags import KNOWN

    flags, now = read
    rows = []
    for name, spec in KNOWN.items():
        entry = flags.current(name, now) if flags is not None else None
        rows.append(
            {
                "name": name,
                "value": entry.value if entry is not None else spec.default,
                "default": spec.default,
                "scope": spec.scope,
                "by": entry.by if entry is not None else None,
                "reason": entry.reason if entry is not None else None,
                "set_at": entry.set_at.isoformat() if entry is not None else None,
                "expires_at": _iso(entry.expires_at) if entry is not None else None,
            }
        )
    return rows


def set_flag(
    store: MessageStore,
    name: str,
    value: bool,
    *,
    by: str,
    reason: str,
    now: datetime,
    until: datetime | None,
) -> None:
    """Record flag ``name`` set to ``value`` by ``by`` (ValueError: an unknown flag or a bad
    value; ConflictError: other writers kept changing the flags)."""
    from adapters.flag_store import FlagStore

    FlagStore(store).change(
        lambda flags: flags.set(name, value, by=by, reason=reason, now=now, expires_at=until), now=now
    )
