"""The adapters a command needs, one at a time: the store, the read models' engine, providers, the
failed queue, the events outbox. ``bootstrap`` composes the pipeline from them.

Each adapter's module is imported when that adapter is built: a command pays only for what it
uses (``smeg history`` needs no pika, httpx or pykka; see ``scripts/time_cli.py``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from smeg_actors.runtime.config import Settings, SettingsError

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from adapters.event_store import MessageStore
    from adapters.events_exchange import EventsExchangePublisher
    from adapters.rabbitmq_failed import FailedQueueReader
    from domain.circuit import CircuitPolicy
    from domain.ports import Provider
    from domain.routing import RoutingPolicy
    from smeg_actors.runtime.alerting import Alerting


def open_store(settings: Settings) -> MessageStore:
    """The event store the settings name (raises StoreError)."""
    from adapters.event_store import MessageStore

    return MessageStore(
        settings.database_url, schema=settings.database_schema, timeout=settings.database_timeout
    )


def open_engine(settings: Settings) -> Engine:
    """The SQLAlchemy engine for our own tables, with the same timeouts as the store.

    Read models an earlier smeg kept in the SQLite store's file are moved to their own file first.
    """
    from adapters.read_model_files import move_read_models

    move_read_models(settings.database_url, settings.read_models_database_url)
    return read_models_engine(settings)


def read_models_engine(settings: Settings) -> Engine:
    """The engine of the read models' database as it is (for a check: nothing is moved)."""
    from adapters.sql import make_engine

    return make_engine(
        settings.read_models_database_url,
        schema=settings.database_schema,
        statement_timeout_s=settings.database_timeout,
    )


def build_providers(settings: Settings, environ: Mapping[str, str] = os.environ) -> dict[str, Provider]:
    """Every configured provider; a bad provider config is a SettingsError naming it."""
    from adapters.providers import build_provider

    configs = settings.provider_configs()
    if not configs:
        raise SettingsError(
            "no provider configured: set SMEG_PROVIDER_URL or add [providers.NAME] to the config"
        )
    try:
        return {name: build_provider(name, _transport(config), environ) for name, config in configs.items()}
    except ValueError as exc:
        raise SettingsError(str(exc)) from None


#: A provider table's keys about its health and routing, not its transport (``build_provider``
#: never sees them).
HEALTH_KEYS = frozenset({"circuit", "fallback", "rate_limit"})


def _transport(config: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in config.items() if key not in HEALTH_KEYS}


def routing_policy(settings: Settings, names: Iterable[str] | None = None) -> RoutingPolicy:
    """Pinned providers, channel routes (``[routes.CHANNEL] weights``) and ``fallback`` lists
    over the providers ``names`` (by default the configured ones); a bad one is a SettingsError
    naming it."""
    from domain.routing import Route, RoutingPolicy

    configs = settings.provider_configs()
    known = list(names) if names is not None else list(configs)
    fallbacks: dict[str, tuple[str, ...]] = {}
    for name, config in configs.items():
        chain = config.get("fallback", [])
        if not isinstance(chain, list) or not all(isinstance(other, str) for other in chain):
            raise SettingsError(f"provider {name}: fallback must be a list of provider names")
        fallbacks[name] = tuple(chain)
    routes: dict[str, Route] = {}
    try:
        for channel, table in settings.routes.items():
            weights = table.get("weights") if isinstance(table, Mapping) else None
            if (
                set(table) - {"weights"}
                or not isinstance(weights, Mapping)
                or not all(isinstance(w, int) and not isinstance(w, bool) for w in weights.values())
            ):
                raise ValueError(f"route {channel}: needs only weights = {{ provider = integer, ... }}")
            try:
                routes[channel] = Route(tuple(weights.items()))
            except ValueError as exc:
                raise ValueError(f"route {channel}: {exc}") from None
        default = settings.default_provider or next(iter(known), "")
        return RoutingPolicy(
            default, frozenset(known), fallbacks, routes, failover_after=settings.failover_after
        )
    except ValueError as exc:
        raise SettingsError(str(exc)) from None


def circuit_policies(settings: Settings) -> dict[str, CircuitPolicy]:
    """Each provider's breaker settings (``[providers.NAME.circuit]``, else the defaults); a bad
    table is a SettingsError naming the provider."""
    from domain.circuit import CircuitPolicy

    policies = {}
    for name, config in settings.provider_configs().items():
        table = config.get("circuit", {})
        try:
            if not isinstance(table, Mapping):
                raise ValueError("circuit: must be a table")
            policies[name] = CircuitPolicy.from_mapping(table)
        except ValueError as exc:
            raise SettingsError(f"provider {name}: {exc}") from None
    return policies


def rate_limits(settings: Settings) -> dict[str, float | None]:
    """Each provider's ``rate_limit`` (messages/s for the whole deployment; None: unlimited); a
    bad one is a SettingsError naming the provider."""
    limits: dict[str, float | None] = {}
    for name, config in settings.provider_configs().items():
        limit = config.get("rate_limit")
        if limit is not None and (
            isinstance(limit, bool) or not isinstance(limit, int | float) or not 0.01 <= limit <= 1_000_000
        ):
            raise SettingsError(
                f"provider {name}: rate_limit must be a number of messages/s, 0.01 to 1000000"
            )
        limits[name] = float(limit) if limit is not None else None
    return limits


def check_routing(settings: Settings, providers: Iterable[str]) -> None:
    """Raise the SettingsError of a bad circuit table, route, fallback list, rate limit or
    canary: before any dependency is checked, so a typo is exit 2, not a half-started process."""
    from smeg_actors.runtime.canary import check_canary

    providers = list(providers)
    circuit_policies(settings)
    routing_policy(settings, providers)
    rate_limits(settings)
    check_canary(settings, providers)


def alerting(settings: Settings, store: MessageStore, environ: Mapping[str, str] = os.environ) -> Alerting:
    """The alert store, the rules with ``[alerts.rules.NAME]`` applied, the log sink and every
    ``[alerts.sinks.NAME]`` (sensors come with the runtime); a bad table is a SettingsError."""
    from adapters.alert_sinks import build_sinks
    from adapters.alert_store import AlertStore
    from smeg_actors.runtime.alerting import Alerting, rules_from

    try:
        rules = rules_from(settings.alerts.get("rules", {}))
        sinks = build_sinks(settings.alerts.get("sinks", {}), environ)
    except ValueError as exc:
        raise SettingsError(str(exc)) from None
    return Alerting(AlertStore(store), rules, sinks)


def open_failed_queue(settings: Settings) -> FailedQueueReader:
    """A reader of ``{prefix}.failed`` (for redrive; raises BrokerUnavailableError)."""
    from adapters.rabbitmq import Topology
    from adapters.rabbitmq_failed import FailedQueueReader

    return FailedQueueReader(settings.amqp_url, Topology(settings.queue_prefix), heartbeat=settings.heartbeat)


def events_outbox(settings: Settings, store: MessageStore, engine: Engine) -> EventsExchangePublisher:
    """The publisher of lifecycle events to the events exchange."""
    from adapters.events_exchange import EventsExchangePublisher
    from adapters.rabbitmq import Topology

    return EventsExchangePublisher(store, engine, settings.amqp_url, Topology(settings.queue_prefix))
