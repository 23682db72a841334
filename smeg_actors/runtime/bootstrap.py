"""The composition root: every adapter a process uses is built here, from settings.

``build_runtime`` builds the delivery pipeline for ``smeg run``, the demo and the tests (which
pass their own store, providers, broker or clock); the other commands take the single pieces
they need (``open_store``, ``open_engine``, ``build_providers``, ``open_failed_queue``,
``events_outbox``). Nothing else constructs an adapter.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine

from adapters.event_store import MessageStore
from adapters.events_exchange import EventsExchangePublisher
from adapters.failed_outbox import FailedOutbox
from adapters.memory_broker import MemoryFailurePublisher, MemoryIntake
from adapters.providers import build_provider
from adapters.rabbitmq import Topology
from adapters.rabbitmq_failed import FailedQueueReader, RabbitFailurePublisher
from adapters.rabbitmq_intake import RabbitIntake
from adapters.read_model_files import move_read_models
from adapters.sql import make_engine
from adapters.status_view import UnfinishedIndex
from domain.ports import FailedQueue, FailurePublisher, Intake, LogOutbox, Provider
from smeg_actors.runtime.clock import Clock, utc_now
from smeg_actors.runtime.config import Settings, SettingsError
from smeg_actors.runtime.pipeline import Parts, Runtime
from smeg_actors.runtime.read_models import ReadModelSet, runners


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
    return read_models_engine(settings)


def read_models_engine(settings: Settings) -> Engine:
    """The engine of the read models' database as it is (for a check: nothing is moved)."""
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


def open_failed_queue(settings: Settings) -> FailedQueueReader:
    """A reader of ``{prefix}.failed`` (for redrive; raises BrokerUnavailableError)."""
    return FailedQueueReader(settings.amqp_url, Topology(settings.queue_prefix), heartbeat=settings.heartbeat)


def events_outbox(settings: Settings, store: MessageStore, engine: Engine) -> EventsExchangePublisher:
    """The publisher of lifecycle events to the events exchange."""
    return EventsExchangePublisher(store, engine, settings.amqp_url, Topology(settings.queue_prefix))


@dataclass
class Broker:
    """The broker side of a runtime: where requests come from and where failures go.

    ``events`` builds the events-exchange outbox (None: no events exchange); ``open_failed_queue``
    opens the failed queue for the automatic redriver (None: no automatic redrive).
    """

    intake: Intake
    publisher: FailurePublisher
    events: Callable[[MessageStore, Engine], LogOutbox] | None = None
    open_failed_queue: Callable[[], FailedQueue[Any]] | None = None


def rabbitmq_broker(settings: Settings, known_providers: set[str]) -> Broker:
    """RabbitMQ, as the settings name it."""
    topology = Topology(settings.queue_prefix)
    intake = RabbitIntake(
        settings.amqp_url,
        topology,
        heartbeat=settings.heartbeat,
        prefetch=settings.prefetch,
        batch_size=settings.batch_size,
        known_providers=known_providers,
    )
    return Broker(
        intake=intake,
        publisher=RabbitFailurePublisher(settings.amqp_url, topology, heartbeat=settings.heartbeat),
        events=lambda store, engine: events_outbox(settings, store, engine),
        open_failed_queue=lambda: open_failed_queue(settings),
    )


def memory_broker(known_providers: set[str]) -> Broker:
    """The in-memory broker of the demo (same ports as RabbitMQ, nothing leaves the process)."""
    return Broker(intake=MemoryIntake(known_providers=known_providers), publisher=MemoryFailurePublisher())


def build_runtime(
    settings: Settings,
    *,
    store: MessageStore | None = None,
    providers: dict[str, Provider] | None = None,
    broker: Broker | None = None,
    clock: Clock | None = None,
    redrive: bool = True,
    stale_after: float | None = None,
) -> Runtime:
    """The delivery pipeline; what is not given is built from the settings.

    One engine serves every read model, the dead-letter outbox and the events outbox.
    ``redrive=False`` leaves the automatic redriver out even where the broker has a failed queue.
    """
    store = store if store is not None else open_store(settings)
    providers = providers if providers is not None else build_providers(settings)
    broker = broker if broker is not None else rabbitmq_broker(settings, set(providers))
    engine = open_engine(settings)
    every = runners(store, engine)
    parts = Parts(
        store=store,
        intake=broker.intake,
        providers=providers,
        engine=engine,
        read_models=ReadModelSet(store, every),
        status=ReadModelSet(store, every[:1]),
        unfinished=UnfinishedIndex(engine),
        outbox=FailedOutbox(store, engine, broker.publisher),
        events=broker.events(store, engine) if broker.events is not None else None,
        open_failed_queue=broker.open_failed_queue if redrive else None,
    )
    runtime = Runtime(settings, parts, clock=clock or utc_now, stale_after=stale_after)
    broker.intake.hold = runtime.hold_intake
    return runtime
