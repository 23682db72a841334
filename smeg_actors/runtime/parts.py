"""What the actor tree needs from the outside world (``Parts``), built by ``bootstrap``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine

from domain.circuit import CircuitPolicy
from domain.ports import (
    FailedQueue,
    FlagRepository,
    Intake,
    LogOutbox,
    MessageRepository,
    Peers,
    Provider,
    ProviderHealthRepository,
    ReadModels,
    RequestedRetries,
    UnfinishedMessages,
)
from domain.routing import RoutingPolicy


@dataclass
class Parts:
    """What the actor tree needs from the outside world, built by ``bootstrap.build_runtime``.

    ``engine`` is the read models' database (one engine for all of them); ``status`` is the
    ``message_status`` read model alone (the scheduler catches it up before it rebuilds its
    retries); ``events`` is None without an events exchange (the demo), ``open_failed_queue``
    None without an automatic redriver.
    """

    store: MessageRepository
    intake: Intake
    providers: dict[str, Provider]
    engine: Engine
    read_models: ReadModels
    status: ReadModels
    unfinished: UnfinishedMessages
    outbox: LogOutbox
    events: LogOutbox | None = None
    #: The retries people asked for, looked for each second (None: left to the orphan sweep).
    requested: RequestedRetries | None = None
    open_failed_queue: Callable[[], FailedQueue[Any]] | None = None
    health: ProviderHealthRepository | None = None
    policies: dict[str, CircuitPolicy] = field(default_factory=dict)
    routing: RoutingPolicy | None = None
    limits: dict[str, float | None] = field(default_factory=dict)
    peers: Peers | None = None
    #: The operators' flags (None: none kept, every flag at its default).
    flags: FlagRepository | None = None
    alerting: Any = None
    #: A ``runtime.canary.Canary`` where this process sends the canary, else None.
    canary: Any = None
