"""Which read models smeg keeps, and the operations on them behind ``smeg projections``."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import structlog
from sqlalchemy import Engine, select

from adapters.event_store import MessageStore
from adapters.events_exchange import TRACKING_NAME as EVENTS_TRACKING
from adapters.events_exchange import EventsExchangePublisher
from adapters.failed_outbox import TRACKING_NAME as FAILED_TRACKING
from adapters.parked_events import ParkedEvent, latest_parked, parked_counts
from adapters.projections import Projection, ProjectionRunner, read_position, step_together, tracking
from adapters.stats_view import stats_projections
from adapters.status_view import MessageStatusProjection

log = structlog.get_logger(__name__)


def all_projections() -> list[Projection]:
    """Every read model; each follows the log under its own name and position."""
    return [MessageStatusProjection(), *stats_projections()]


def runners(store: MessageStore, engine: Engine) -> list[ProjectionRunner]:
    """One runner per read model (so each can be rebuilt on its own)."""
    return [ProjectionRunner(store, engine, [p], name=p.name) for p in all_projections()]


class ReadModelSet:
    """The ``ReadModels`` port: runners stepped together over one read of the log."""

    def __init__(self, store: MessageStore, runners: list[ProjectionRunner]) -> None:
        self.store, self.runners = store, runners

    def catch_up(self) -> dict[str, int]:
        return {runner.name: runner.catch_up() for runner in self.runners}

    def step(self) -> int:
        return step_together(self.store, self.runners)

    def positions(self) -> dict[str, int]:
        return {runner.name: runner.position() for runner in self.runners}


@dataclass(frozen=True)
class FollowerStatus:
    """How far one log follower is behind the head of the log, and what it parked."""

    name: str
    position: int
    head: int
    lag_events: int
    lag_seconds: float
    parked: int = 0
    latest_parked: tuple[ParkedEvent, ...] = ()
    #: False for the failed-queue outbox: it reads Failed events only, so its position stays at
    #: the latest one and its distance to the head says nothing (its lag is left out, as 0).
    lag_known: bool = True

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "position": self.position,
            "head": self.head,
            "lag_events": self.lag_events if self.lag_known else None,
            "lag_seconds": round(self.lag_seconds, 3) if self.lag_known else None,
            "parked": self.parked,
            "latest_parked": [item.as_json() for item in self.latest_parked],
        }


def follower_status(store: MessageStore, engine: Engine, *, latest: int = 3) -> list[FollowerStatus]:
    """Position and lag (events, and age of the oldest unapplied event) of each follower, with
    how many events it parked and the ``latest`` of them. The failed-queue outbox is listed
    (without a lag) once its position exists."""
    head = store.max_position()
    rows = []
    with engine.connect() as connection:
        names = [p.name for p in all_projections()] + [EVENTS_TRACKING]
        positions = {name: read_position(connection, name) for name in names}
        failed = connection.scalar(
            select(tracking.c.position).where(tracking.c.projection == FAILED_TRACKING)
        )
        counts = parked_counts(connection)
        recent = {
            name: tuple(latest_parked(connection, name, latest)) for name, count in counts.items() if count
        }
    for name, position in positions.items():
        lag_seconds = 0.0
        pending = store.read_events(position, 1)[0] if position < head else []
        if pending:
            oldest = pending[0][1].timestamp
            lag_seconds = max(0.0, (datetime.now(timezone.utc) - oldest).total_seconds())
        lag = max(0, head - position)
        rows.append(
            FollowerStatus(name, position, head, lag, lag_seconds, counts.get(name, 0), recent.get(name, ()))
        )
    if failed is not None:
        parked = (counts.get(FAILED_TRACKING, 0), recent.get(FAILED_TRACKING, ()))
        rows.append(FollowerStatus(FAILED_TRACKING, int(failed), head, 0, 0.0, *parked, lag_known=False))
    return rows


def parked_events(engine: Engine, follower: str | None = None, limit: int = 100) -> list[ParkedEvent]:
    """Parked events, newest first, of one follower or of all."""
    with engine.connect() as connection:
        return latest_parked(connection, follower, limit)


def run_forever(
    store: MessageStore,
    runners: list[ProjectionRunner],
    events: EventsExchangePublisher | None,
    stop: threading.Event,
    interval: float = 0.1,
    gather: int = 500,
    linger: float = 0.05,
    defer: float = 1.0,
) -> None:
    """Apply new events to the read models and publish them, until ``stop`` is set.

    One thread alternates a batch of each (a publisher thread of its own measured worse: the two
    fought over the interpreter lock). A broker failure pauses publication (2 s) without
    stopping the read models. After a batch of fewer than ``gather`` events it waits ``linger``
    seconds, so that under load it works in large batches (each batch costs queries and a commit
    of its own) and leaves the CPU to the pipeline, at the price of that much more lag. While a
    batch of the read models holds ``gather`` events or more they are behind, and publication waits
    its turn for up to ``defer`` seconds: operators and the scheduler read the read models; the
    exchange is at least once and catches up when the burst is over.
    """
    publish_after = 0.0
    publish_due = 0.0
    while not stop.is_set():
        applied = step_together(store, runners, batch=2000)
        busy = applied
        now = time.monotonic()
        # While the read models are behind, they go first; the exchange still gets a turn a second.
        if events is not None and now >= publish_after and (applied < gather or now >= publish_due):
            publish_due = now + defer
            try:
                busy += events.publish_pending()
            except Exception as exc:
                log.warning("events_publication_deferred", error=f"{type(exc).__name__}: {exc}"[:300])
                publish_after = time.monotonic() + 2.0
        if not busy:
            stop.wait(interval)
        elif busy < gather:
            stop.wait(linger)


def rate(done: int, started: float) -> float:
    return done / max(time.monotonic() - started, 1e-9)
