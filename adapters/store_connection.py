"""How the event store reaches its database: eventsourcing's persistence settings from a URL, and
connection errors that name their cause. The PostgreSQL pool is ``adapters.postgres_factory``,
loaded by eventsourcing only for a PostgreSQL URL (psycopg costs a SQLite command ~70 ms to import)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping

from domain.ports import StoreError

CORE = "core"
SQLALCHEMY = "sqlalchemy"


def sqlite_database(url: str) -> str | None:
    """The database of a plain ``sqlite:///…`` URL ("" for memory), as SQLAlchemy reads it; None for
    any other URL. Read without SQLAlchemy, whose import is a third of a SQLite command's start-up."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.split("+")[0] != "sqlite" or "?" in rest or (rest and not rest.startswith("/")):
        return None
    return rest[1:]  # SQLAlchemy keeps a SQLite path as written: %20 stays %20


def store_env(url: str, *, recorder: str = CORE, schema: str = "") -> dict[str, str]:
    """Translate a SQLAlchemy URL into eventsourcing's persistence settings."""
    env = {"ORIGINATOR_ID_TYPE": "uuid"}
    if recorder == SQLALCHEMY:
        env.update(PERSISTENCE_MODULE="eventsourcing_sqlalchemy", SQLALCHEMY_URL=url)
        if schema:
            env["SQLALCHEMY_SCHEMA"] = schema
        return env
    plain_sqlite = sqlite_database(url)
    if plain_sqlite is not None:
        return _sqlite_env(env, plain_sqlite)
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return _sqlite_env(env, parsed.database or "")
    if backend == "postgresql":
        env.update(
            PERSISTENCE_MODULE="adapters.postgres_factory:BoundedPostgresFactory",
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


def diagnosed(exc: BaseException, env: Mapping[str, str]) -> str:
    """The pool only says it "couldn't get a connection after 5.00 sec"; one direct connection
    says why (refused at host:port, no such database, authentication failed)."""
    text = one_line(exc)
    if "couldn't get a connection" not in text or "POSTGRES_HOST" not in env:
        return text
    where = f"{env['POSTGRES_HOST']}:{env['POSTGRES_PORT']}"
    import psycopg  # only on this PostgreSQL error path (see the module doc)

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


def _sqlite_env(env: dict[str, str], db: str) -> dict[str, str]:
    if db in ("", ":memory:"):
        db = f"file:smeg-{uuid.uuid4().hex}?mode=memory&cache=shared"
    env.update(PERSISTENCE_MODULE="eventsourcing.sqlite", SQLITE_DBNAME=db, SQLITE_LOCK_TIMEOUT="10")
    return env
