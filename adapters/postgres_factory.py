"""eventsourcing's PostgreSQL factory with bounded waits, and the pool's cheap connection check.

Named in ``PERSISTENCE_MODULE`` (``adapters.store_connection.store_env``): loaded for PostgreSQL only.
"""

from __future__ import annotations

import select
import time
import weakref
from collections.abc import Callable
from typing import Any

import psycopg
from eventsourcing.postgres import PostgresFactory
from eventsourcing.utils import Environment
from psycopg_pool import ConnectionPool

from adapters.store_connection import TIMEOUT_KEY


class BoundedPostgresFactory(PostgresFactory):
    """eventsourcing's PostgreSQL factory, with waits bounded so a silent network fails a write.

    A statement timeout, TCP keepalives and ``tcp_user_timeout`` are added to the pool's connection
    arguments before its first connection is opened (eventsourcing has no settings for them), and
    the pool checks a connection it hands out with ``PooledConnectionCheck`` instead of a round trip
    each time.
    """

    def __init__(self, env: Environment) -> None:
        super().__init__(env)
        milliseconds = int(float(self.env.get(TIMEOUT_KEY) or 15) * 1000)
        pool = self.datastore.pool
        kwargs = pool.kwargs
        assert isinstance(kwargs, dict)
        kwargs.update(
            options=f"-c statement_timeout={milliseconds}",
            keepalives=1,
            keepalives_idle=5,
            keepalives_interval=2,
            keepalives_count=3,
            tcp_user_timeout=milliseconds,
        )
        # psycopg_pool takes ``check`` only when built; eventsourcing builds it (PRE_PING = ping always).
        pool._check = PooledConnectionCheck()


class PooledConnectionCheck:
    """Pings a pooled connection before use only when it may be dead: something arrived on its
    socket while it sat idle (a server that ends a session says so, then closes it), or it has not
    been handed out for ``idle`` seconds (a middlebox may have dropped it silently).

    A ping on every checkout was one round trip per transaction; under load each round trip also
    costs a wait for the interpreter lock, and the committer, the serial stage, paid it on every
    write. A connection that dies in use fails its statement, which the writer tries again on
    another connection (the pool discards a broken one).
    """

    def __init__(self, idle: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.idle, self.clock = idle, clock
        self.handed_out: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()

    def __call__(self, connection: Any) -> None:
        now = self.clock()
        last = self.handed_out.get(connection)
        self.handed_out[connection] = now
        if last is not None and now - last < self.idle and not _readable(connection):
            return
        ConnectionPool.check_connection(connection)


def _readable(connection: Any) -> bool:
    try:
        return bool(select.select([connection.fileno()], [], [], 0)[0])
    except (OSError, ValueError, psycopg.Error):
        return True
