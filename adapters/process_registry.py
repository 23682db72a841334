"""Which delivery processes are alive, by heartbeats in the read models' database (``smeg_processes``).

A provider's ``rate_limit`` is the deployment's: each live process takes an equal share of it, so
processes must know how many of them there are, on one host (``smeg run --processes N``) or on
several sharing one PostgreSQL database. Each beats every few seconds; a row not beaten within
``LIVE_WITHIN`` is a process that died (kill -9 leaves its row, which simply goes stale).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import Column, DateTime, Engine, MetaData, String, Table, delete, func, insert, select, update

#: A process not heard of for this long is counted out.
LIVE_WITHIN = timedelta(seconds=15)

_metadata = MetaData()
processes = Table(
    "smeg_processes",
    _metadata,
    Column("process", String(200), primary_key=True),
    Column("seen_at", DateTime(timezone=True), nullable=False),
)


class ProcessRegistry:
    """The ``Peers`` port over a SQL table; created on first use."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.created = False

    def beat(self, process: str, now: datetime) -> int:
        """Record that ``process`` is alive now; how many processes are (itself included)."""
        self._create()
        with self.engine.begin() as connection:
            seen = update(processes).where(processes.c.process == process).values(seen_at=now)
            if connection.execute(seen).rowcount == 0:
                connection.execute(insert(processes).values(process=process, seen_at=now))
            connection.execute(delete(processes).where(processes.c.seen_at < now - 20 * LIVE_WITHIN))
            live = select(func.count()).where(processes.c.seen_at >= now - LIVE_WITHIN)
            return max(1, int(connection.execute(live).scalar_one()))

    def leave(self, process: str) -> None:
        """A process stopping cleanly gives its share back at once."""
        self._create()
        with self.engine.begin() as connection:
            connection.execute(delete(processes).where(processes.c.process == process))

    def _create(self) -> None:
        if self.created:
            return
        with self.engine.begin() as connection:
            _metadata.create_all(connection, checkfirst=True)
        self.created = True
