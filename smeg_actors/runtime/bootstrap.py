"""The composition root: every adapter a process uses is built here, from settings.

``build_runtime`` builds the delivery pipeline for ``smeg run``, the demo and the tests (which
pass their own store, providers, broker or clock) from the single pieces of ``factory``, which
the other commands use directly. Nothing else constructs an adapter.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine

from adapters.event_store import MessageStore
from adapters.failed_outbox import FailedOutbox
from adapters.flag_store import FlagStore
from adapters.memory_broker import MemoryFailurePublisher, MemoryIntake
from adapters.process_registry import ProcessRegistry
from adapters.provider_health_store import ProviderHealthStore
from adapters.rabbitmq import Topology
from adapters.rabbitmq_failed import RabbitFailurePublisher
from adapters.rabbitmq_intake import RabbitIntake
from adapters.requested_retries import RequestedRetryIndex
from adapters.status_view import UnfinishedIndex
from domain.ports import FailedQueue, FailurePublisher, Intake, LogOutbox, Provider
from smeg_actors.runtime import metrics
from smeg_actors.runtime.alerting import sensors_for
from smeg_actors.runtime.canary import build_canary, sends_canary
from smeg_actors.runtime.clock import Clock, utc_now
from smeg_actors.runtime.config import Settings
from smeg_actors.runtime.factory import (
    alerting,
    build_providers,
    circuit_policies,
    events_outbox,
    open_engine,
    open_failed_queue,
    open_store,
    rate_limits,
    routing_policy,
)
from smeg_actors.runtime.parts import Parts
from smeg_actors.runtime.pipeline import Runtime
from smeg_actors.runtime.read_models import ReadModelSet, runners


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
    alerts: bool | None = None,
) -> Runtime:
    """The delivery pipeline; what is not given is built from the settings.

    One engine serves every read model, the dead-letter outbox and the events outbox.
    ``redrive=False`` leaves the automatic redriver out even where the broker has a failed queue.
    ``alerts``: whether the alert evaluator runs (by default where the broker is RabbitMQ, built
    here: ``smeg run``), and with it the canary, where ``[canary]`` asks for one.
    """
    alerts = broker is None if alerts is None else alerts
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
        requested=RequestedRetryIndex(engine),
        outbox=FailedOutbox(store, engine, broker.publisher),
        events=broker.events(store, engine) if broker.events is not None else None,
        open_failed_queue=broker.open_failed_queue if redrive else None,
        health=ProviderHealthStore(store),
        policies=circuit_policies(settings),
        routing=routing_policy(settings, providers),
        limits=rate_limits(settings),
        peers=ProcessRegistry(engine),
        flags=FlagStore(store),
    )
    parts.alerting = alerting(settings, store) if alerts else None
    if parts.alerting is not None and sends_canary(settings):
        parts.canary = build_canary(settings, store, parts.alerting.rules["canary"].threshold)
    runtime = Runtime(settings, parts, clock=clock or utc_now, stale_after=stale_after)
    if parts.alerting is not None:
        parts.alerting.sensors = sensors_for(
            parts.alerting.rules,
            view=runtime.gate,
            engine=engine,
            amqp_url=settings.amqp_url,
            prefix=settings.queue_prefix,
            store=store,
            canary=parts.canary,
        )
    broker.intake.hold = runtime.hold_intake
    if hasattr(broker.intake, "paused"):  # RabbitMQ's: stops consuming while delivery is paused
        broker.intake.paused = runtime.flags.delivery_paused
    if hasattr(broker.intake, "on_reject"):
        broker.intake.on_reject = metrics.rejected.inc
    return runtime
