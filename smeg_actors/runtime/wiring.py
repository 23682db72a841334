"""Real adapters from settings: the store, RabbitMQ, the configured providers."""

from __future__ import annotations

import os
from collections.abc import Mapping

from sqlalchemy import Engine

from adapters.event_store import MessageStore
from adapters.events_exchange import EventsExchangePublisher
from adapters.providers import build_provider
from adapters.rabbitmq import Topology
from adapters.rabbitmq_failed import RabbitFailurePublisher
from adapters.rabbitmq_intake import RabbitIntake
from adapters.read_model_files import move_read_models
from adapters.sql import make_engine
from domain.ports import Provider
from smeg_actors.runtime.bootstrap import Runtime
from smeg_actors.runtime.config import Settings, SettingsError


def open_store(settings: Settings) -> MessageStore:
    """The event store the settings name (raises StoreError)."""
    return MessageStore(
        settings.database_url, schema=settings.database_schema, timeout=settings.database_timeout
    )


def open_engine(settings: Settings) -> Engine:
    """The SQLAlchemy engine for our own tables, with the same timeouts as the store.

    Read models an earlier smeg kept in the SQLite store's file are moved to their own file first.
    """
    move_read_models(settings.database_url, settings.read_models_database_url)
    return make_engine(
        settings.read_models_database_url,
        schema=settings.database_schema,
        statement_timeout_s=settings.database_timeout,
    )


def build_providers(settings: Settings, environ: Mapping[str, str] = os.environ) -> dict[str, Provider]:
    """Every configured provider; a bad provider config is a SettingsError naming it."""
    configs = settings.provider_configs()
    if not configs:
        raise SettingsError(
            "no provider configured: set SMEG_PROVIDER_URL or add [providers.NAME] to the config"
        )
    try:
        return {name: build_provider(name, config, environ) for name, config in configs.items()}
    except ValueError as exc:
        raise SettingsError(str(exc)) from None


def build_runtime(settings: Settings, store: MessageStore, providers: dict[str, Provider]) -> Runtime:
    """The production runtime: RabbitMQ intake and publisher."""
    topology = Topology(settings.queue_prefix)
    known = set(providers)
    intake = RabbitIntake(
        settings.amqp_url,
        topology,
        heartbeat=settings.heartbeat,
        prefetch=settings.prefetch,
        batch_size=settings.batch_size,
        known_providers=known,
    )
    publisher = RabbitFailurePublisher(settings.amqp_url, topology, heartbeat=settings.heartbeat)
    engine = open_engine(settings)
    events = EventsExchangePublisher(store, engine, settings.amqp_url, topology)
    runtime = Runtime(
        settings, store=store, intake=intake, publisher=publisher, providers=providers, events=events
    )
    intake.hold = runtime.hold_intake
    return runtime
