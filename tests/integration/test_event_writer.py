"""EventWriter against real databases: the rows the library would write, in commit order."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from eventsourcing.persistence import IntegrityError
from psycopg import sql

from adapters.event_store import Change, Messages, MessageStore, store_env
from adapters.event_writer import EventWriter
from tests.integration.test_event_store import (
    Backend,
    every_event_type,
    new_message,
    psycopg_conninfo,
    state,
    utcnow,
)


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


def test_rows_are_what_the_library_mapper_stores_for_every_event_type(store):
    # Given
    message = every_event_type(utcnow())
    events = list(message.pending_events)
    writer = store.app.writer
    assert writer is not None

    # When
    rows = writer.rows(events)

    # Then
    expected = [store.app.mapper.to_stored_event(e) for e in events]
    assert rows == [(s.originator_id, s.originator_version, s.topic, s.state) for s in expected]


def test_written_rows_read_back_through_the_library_in_write_order(backend, store):
    # Given
    messages = [new_message(f"w-{i}") for i in range(5)]
    for message in messages:
        message.start_attempt("alpha", now=utcnow())
    expected = {m.id: state(m) for m in messages}
    writer = store.app.writer

    # When: one statement, events of five aggregates interleaved
    events = [e for pair in zip(*(m.collect_events() for m in messages), strict=True) for e in pair]
    writer.write(writer.rows(events))

    # Then
    other = backend.open()
    assert {m.id: state(other.get(m.id)) for m in messages} == expected
    notifications = other.app.recorder.select_notifications(start=1, limit=100)
    assert [(n.originator_id, n.originator_version) for n in notifications] == [
        (e.originator_id, e.originator_version) for e in events
    ]
    ids = [n.id for n in notifications]
    assert ids == sorted(ids)


def test_a_taken_version_raises_integrity_error_and_writes_nothing_of_the_batch(store):
    # Given: one message stored, then a batch that reuses its first version
    first = new_message("taken")
    store.commit([Change(load=lambda: first)])
    fresh = new_message("fresh")
    duplicate = new_message("taken")
    writer = store.app.writer

    # When
    with pytest.raises(IntegrityError):
        writer.write(writer.rows([*fresh.collect_events(), *duplicate.collect_events()]))

    # Then
    assert store.history(fresh.id) == []
    assert [type(e).__name__ for e in store.history(first.id)] == ["Received"]


def test_without_a_writer_for_its_configuration_the_library_writes(tmp_path):
    # Given: compression is something the writer leaves to the library
    env = store_env(f"sqlite:///{tmp_path}/z.db")
    env["COMPRESSOR_TOPIC"] = "eventsourcing.compressor:ZlibCompressor"
    app = Messages(env)
    message = new_message("zipped")
    message.start_attempt("alpha", now=utcnow() + timedelta(seconds=1))
    expected = state(message)

    # When
    app.save(message)

    # Then
    assert EventWriter.for_application(app) is None
    assert app.writer is None
    assert state(app.repository.get(message.id)) == expected
    app.close()


# --- PostgreSQL: the library's serialisation and notification ---------------------------------


@pytest.fixture
def pg_store(pg_schema: tuple[str, str]) -> Iterator[tuple[MessageStore, str, str]]:
    url, schema = pg_schema
    opened = MessageStore(url, schema=schema)
    yield opened, url, schema
    opened.close()


def test_postgres_writes_wait_for_other_writers_so_positions_follow_commit_order(pg_store):
    # Given: another transaction holds the lock a plain INSERT takes (and does not wait on)
    store, url, schema = pg_store
    writer = store.app.writer
    rows = writer.rows(new_message("queued").collect_events())
    table = sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier("messages_events"))
    done = threading.Event()
    with psycopg.connect(psycopg_conninfo(url)) as other:
        other.execute(sql.SQL("LOCK TABLE {} IN ROW EXCLUSIVE MODE").format(table))
        thread = threading.Thread(target=lambda: (writer.write(rows), done.set()), daemon=True)

        # When
        thread.start()
        time.sleep(0.5)
        waited = not done.is_set()
        other.commit()

    # Then: the writer took the table's EXCLUSIVE lock, as the library's recorder does
    assert done.wait(10)
    assert waited
    assert len(store.history(rows[0][0])) == 1


def test_postgres_writes_notify_the_recorders_channel(pg_store):
    # Given
    store, url, _schema = pg_store
    writer = store.app.writer
    with psycopg.connect(psycopg_conninfo(url), autocommit=True) as listener:
        listener.execute(sql.SQL("LISTEN {}").format(sql.Identifier(store.app.recorder.channel_name)))

        # When
        writer.write(writer.rows(new_message("heard").collect_events()))

        # Then
        heard = list(listener.notifies(timeout=5, stop_after=1))
    assert [n.channel for n in heard] == [store.app.recorder.channel_name]
