"""How the event store reaches its database: eventsourcing's persistence settings from a URL, a
PostgreSQL pool whose connections cannot hang, and connection errors that name their cause."""

from __future__ import annotations

import select
import time
import uuid
import weakref
from collections.abc import Callable, Mapping
from typing import Any

import psycopg
from eventsourcing.postgres import PostgresFactory
from eventsourcing.utils import Environment
from psycopg_pool import ConnectionPool
from sqlalchemy.engine import make_url

from domain.ports import StoreError

CORE = "core"
SQLALCHEMY = "sqlalchemy"


def store_env(url: str, *, recorder: str = CORE, schema: str = "") -> dict[str, str]:
    """Translate a SQLAlchemy URL into eventsourcing's persistence settings."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    env = {"ORIGINATOR_ID_TYPE": "uuid"}
    if recorder == SQLALCHEMY:
        env.update(PERSISTENCE_MODULE="eventsourcing_sqlalchemy", SQLALCHEMY_URL=url)
        if schema:
            env["SQLALCHEMY_SCHEMA"] = schema
        return env
    if backend == "sqlite":
        db = parsed.database or ""
        if db in ("", ":memory:"):
            db = f"file:smeg-{uuid.uuid4().hex}?mode=memory&cache=shared"
        env.update(PERSISTENCE_MODULE="eventsourcing.sqlite", SQLITE_DBNAME=db)
        env["SQLITE_LOCK_TIMEOUT"] = "10"
        return env
    if backend == "postgresql":
        env.update(
            PERSISTENCE_MODULE="adapters.store_connection:BoundedPostgresFactory",
            POSTGRES_DBNAME=parsed.database or "postgres",
            POSTGRES_HOST=parsed.host or "127.0.0.1",
            POSTGRES_PORT=str(parsed.port or 5432),
            POSTGRES_USER=parsed.username or "postgres",
            POSTGRES_PASSWORD=parsed.password or "",
            POSTGRES_CONNECT_TIMEOUT="5",
            POSTGRES_LOCK_TIMEOUT="10",
            POSTGRES_POOL_SIZE="4",
            POSTGRES_MAX_OVERFLOW="8",
            POSTGRES_PRE_PING="y",
        )
        if schema:
            env["POSTGRES_SCHEMA"] = schema
        return env
    raise StoreError(f"unsupported database URL scheme: {parsed.drivername}")


TIMEOUT_KEY = "SMEG_STORE_TIMEOUT"


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


def diagnosed(exc: BaseException, env: Mapping[str, str]) -> str:
    """The pool only says it "couldn't get a connection after 5.00 sec"; one direct connection
    says why (refused at host:port, no such database, authentication failed)."""
    text = one_line(exc)
    if "couldn't get a connection" not in text or "POSTGRES_HOST" not in env:
        return text
    where = f"{env['POSTGRES_HOST']}:{env['POSTGRES_PORT']}"
    try:
        psycopg.connect(
            host=env["POSTGRES_HOST"],
            port=env["POSTGRES_PORT"],
            dbname=env["POSTGRES_DBNAME"],
            user=env["POSTGRES_USER"],
            password=env.get("POSTGRES_PASSWORD", ""),
            connect_timeout=5,
        ).close()
    except psycopg.Error as cause:
        reason = " ".join(str(cause).split("\n")[0].split())
        return f"PostgreSQL at {where}: {reason.split(' failed: ')[-1]}"
    return text


def is_database_error(exc: BaseException) -> bool:
    """A driver error (sqlite3 or psycopg) raised by a raw read outside the recorder's wrapping."""
    return type(exc).__module__.split(".")[0] in ("sqlite3", "psycopg", "psycopg_pool")


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__
