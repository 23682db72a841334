"""Reads how far each read model (and the events exchange) is behind the log, every few seconds,
into ``smeg_projection_lag_events`` and ``smeg_projection_lag_seconds``: one reader per ops server
(``smeg run``'s, or a standalone ``smeg projections run``'s), with a store and an engine of its own.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

import structlog

from adapters.store_connection import one_line
from smeg_actors.runtime import metrics
from smeg_actors.runtime.read_models import follower_status

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from adapters.event_store import MessageStore
    from smeg_actors.runtime.config import Settings

log = structlog.get_logger(__name__)

#: Seconds between reads.
EVERY = 5.0

Opener = Callable[[], "tuple[MessageStore, Engine]"]


class ProjectionWatch(threading.Thread):
    """Sets the gauges; a failed read is logged once per outage and leaves the last values.

    The store and the engine are opened on the first read (a store down at start is an outage
    like any other). The first read is one interval after the start: ``smeg run`` serves its
    endpoints before its projector has made the read-model tables of a new store."""

    def __init__(self, opener: Opener, every: float = EVERY) -> None:
        super().__init__(name="smeg-projection-watch", daemon=True)
        self.opener, self.every = opener, every
        self.opened: tuple[MessageStore, Engine] | None = None
        self.halt = threading.Event()
        self.failing = False

    @classmethod
    def of(cls, settings: Settings) -> ProjectionWatch:
        """A watch on the store and the read models the settings name."""

        def opener() -> tuple[MessageStore, Engine]:
            from smeg_actors.runtime.factory import open_store, read_models_engine

            return open_store(settings), read_models_engine(settings)

        return cls(opener)

    def run(self) -> None:
        while not self.halt.wait(self.every):
            self.read()
        self.close()

    def read(self) -> None:
        """Read every follower's lag once into the gauges."""
        try:
            if self.opened is None:
                self.opened = self.opener()
            for row in follower_status(*self.opened, latest=0):
                if row.lag_known:
                    metrics.child(metrics.projection_lag_events, row.name).set(row.lag_events)
                    metrics.child(metrics.projection_lag_seconds, row.name).set(row.lag_seconds)
            self.failing = False
        except Exception as exc:
            if not self.failing:
                log.warning("projection_lag_unreadable", error=one_line(exc)[:300])
            self.failing = True

    def stop(self) -> None:
        self.halt.set()

    def close(self) -> None:
        opened, self.opened = self.opened, None
        if opened is not None:
            opened[0].close()
            opened[1].dispose()
