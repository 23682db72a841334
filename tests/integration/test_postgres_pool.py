"""The PostgreSQL pool's check: no round trip for a connection in use, a fresh one for a dead one."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from adapters.event_store import Change, MessageStore
from adapters.postgres_factory import PooledConnectionCheck
from tests.integration.backends import psycopg_conninfo
from tests.integration.test_event_store import new_message
from tests.waiting import wait_until


@pytest.fixture
def pg_store(pg_schema: tuple[str, str]) -> Iterator[MessageStore]:
    url, schema = pg_schema
    store = MessageStore(url, schema=schema)
    yield store
    store.close()


@pytest.fixture
def pings(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every round-trip check the pool makes, by connection."""
    made: list[Any] = []
    ping = ConnectionPool.check_connection

    def counted(connection: Any) -> None:
        made.append(connection)
        ping(connection)

    monkeypatch.setattr(ConnectionPool, "check_connection", staticmethod(counted))
    return made


def save(store: MessageStore, key: str) -> None:
    message = new_message(key)
    [outcome] = store.commit([Change(load=lambda: message)])
    assert outcome.saved


def pooled_pids(store: MessageStore) -> list[int]:
    """The server process of every connection the pool holds (all checked out at once)."""
    datastore: Any = store.app.recorder.datastore
    size = datastore.pool.min_size
    with ExitStack() as stack:
        return [stack.enter_context(datastore.get_connection()).info.backend_pid for _ in range(size)]


def end_sessions(url: str, pids: list[int]) -> None:
    """Terminate those server processes, and wait until they are gone."""
    with psycopg.connect(psycopg_conninfo(url), autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid", [pids])
        alive = "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)"
        wait_until(lambda: admin.execute(alive, [pids]).fetchone() == (0,), 10, 0.02, "sessions not ended")


def test_the_store_pool_uses_the_pooled_check(pg_store):
    # Then: installed where psycopg_pool looks for it (a renamed attribute would silently not be)
    pool: Any = pg_store.app.recorder.datastore.pool
    assert isinstance(pool._check, PooledConnectionCheck)


def test_a_connection_handed_out_again_soon_is_not_pinged(pg_store, pings):
    # Given: each pooled connection handed out once (pinged then: first use)
    pids = pooled_pids(pg_store)
    pings.clear()

    # When
    for i in range(20):
        save(pg_store, f"hot-{i}")

    # Then
    assert pings == []
    assert len(pids) == pg_store.app.recorder.datastore.pool.min_size


def test_writes_go_on_after_the_server_ended_every_pooled_session(pg_schema, pg_store, pings):
    # Given: every pooled connection in use recently, then ended by the server
    save(pg_store, "before")
    pids = pooled_pids(pg_store)
    end_sessions(pg_schema[0], pids)
    pings.clear()

    # When: the next writes, at once
    for i in range(10):
        save(pg_store, f"after-{i}")

    # Then: each dead connection was noticed by the check, never by a failed write
    assert len(pings) >= 1
    assert pg_store.get_by_message_id("after-9").status == "received"
    assert not set(pids) & set(pooled_pids(pg_store))


def test_a_connection_idle_longer_than_the_limit_is_pinged(pg_schema):
    # Given
    now = [100.0]
    check = PooledConnectionCheck(idle=5.0, clock=lambda: now[0])
    with psycopg.connect(psycopg_conninfo(pg_schema[0]), autocommit=True) as connection:
        check(connection)

        # When / Then: soon after, no round trip; after the limit, a round trip that fails if dead
        now[0] += 4.9
        check(connection)
        now[0] += 5.1
        end_sessions(pg_schema[0], [connection.info.backend_pid])
        with pytest.raises(psycopg.OperationalError):
            check(connection)


def test_a_connection_ended_by_the_server_fails_the_check_at_once(pg_schema):
    # Given: a connection handed out a moment ago
    check = PooledConnectionCheck(idle=3600.0)
    with psycopg.connect(psycopg_conninfo(pg_schema[0]), autocommit=True) as connection:
        check(connection)

        # When
        end_sessions(pg_schema[0], [connection.info.backend_pid])

        # Then: the server's goodbye on the socket is noticed without waiting for the idle limit
        with pytest.raises(psycopg.OperationalError):
            check(connection)
