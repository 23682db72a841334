"""Fixtures for tests against the real RabbitMQ (127.0.0.1:5672), a prefix per test, cleaned up;
and the stores of the event store's tests, on a SQLite file and on PostgreSQL."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pytest
from sqlalchemy import Engine

from adapters.event_store import MessageStore
from adapters.sql import make_engine, read_models_beside
from tests.integration.backends import Backend

AMQP_URL = os.environ.get("SMEG_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")


def _rabbit_or_fail() -> pika.BlockingConnection:
    try:
        return pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    except Exception as exc:
        message = f"RabbitMQ unreachable at {AMQP_URL}: {exc!r}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture
def amqp_url() -> str:
    return AMQP_URL


@pytest.fixture
def prefix() -> Iterator[str]:
    """A queue prefix of this test's own; its queues and exchange are deleted afterwards."""
    name = f"smegtest-{uuid.uuid4().hex[:10]}"
    connection = _rabbit_or_fail()
    connection.close()
    yield name
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    channel = connection.channel()
    for queue in ("send", "failed", "rejected"):
        channel.queue_delete(f"{name}.{queue}")
    channel.exchange_delete(f"{name}.events")
    connection.close()


@pytest.fixture
def rabbit() -> Iterator[pika.adapters.blocking_connection.BlockingChannel]:
    """A channel of the test's own, for publishing requests and reading queues."""
    connection = _rabbit_or_fail()
    channel = connection.channel()
    channel.confirm_delivery()
    yield channel
    connection.close()


# --- stores: the same tests on a SQLite file and on PostgreSQL ---------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Backend]:
    if request.param == "sqlite":
        db = Backend("sqlite", f"sqlite:///{tmp_path}/s.db")
    else:
        url, schema = request.getfixturevalue("pg_schema")
        db = Backend("postgres", url, schema)
    yield db
    db.close()


@pytest.fixture
def store(backend: Backend) -> MessageStore:
    return backend.open()


@pytest.fixture(params=["sqlite", "postgres"])
def store_and_engine(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[tuple[MessageStore, Engine]]:
    """The event store and the read models' engine, on a SQLite file (read models beside it) and
    on a PostgreSQL schema of the test's own."""
    if request.param == "sqlite":
        url, schema = f"sqlite:///{tmp_path}/smeg.db", ""
        engine = make_engine(read_models_beside(url))
    else:
        url, schema = request.getfixturevalue("pg_schema")
        engine = make_engine(url, schema=schema)
    store = MessageStore(url, schema=schema)
    yield store, engine
    store.close()
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    """The store's (URL, schema): a SQLite file, then a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/smeg.db", ""
    url, schema = request.getfixturevalue("pg_schema")
    return url, schema
