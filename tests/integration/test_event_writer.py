"""EventWriter against real databases: the rows the library would write, in commit order."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any
from uuid import UUID, uuid4

import psycopg
import pytest
from eventsourcing.persistence import IntegrityError, Mapper, OperationalError, StoredEvent
from psycopg import sql

from adapters.event_store import Change, Messages, MessageStore, store_env
from adapters.event_writer import EventWriter
from tests.integration.backends import psycopg_conninfo
from tests.integration.test_event_store import every_event_type, new_message, state, utcnow
from tests.waiting import wait_until


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
    waiting = "SELECT count(*) FROM pg_locks WHERE relation = %s::regclass AND NOT granted"
    with (
        psycopg.connect(psycopg_conninfo(url)) as other,
        psycopg.connect(psycopg_conninfo(url), autocommit=True) as watcher,
    ):
        other.execute(sql.SQL("LOCK TABLE {} IN ROW EXCLUSIVE MODE").format(table))
        thread = threading.Thread(target=lambda: (writer.write(rows), done.set()), daemon=True)

        # When: it finished, or it queued for a lock on the table (the point where it would finish)
        thread.start()
        name = table.as_string(watcher)
        wait_until(
            lambda: done.is_set() or watcher.execute(waiting, [name]).fetchone() != (0,),
            10,
            0.01,
            message="the write neither finished nor queued for the table",
        )
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


def test_two_events_of_one_version_in_one_batch_raise_integrity_error_and_write_nothing(store):
    # Given: a batch that holds the same message's first version twice
    first, again = new_message("twice"), new_message("twice")
    writer = store.app.writer

    # When
    with pytest.raises(IntegrityError):
        writer.write(writer.rows([*first.collect_events(), *again.collect_events()]))

    # Then
    assert store.history(first.id) == []


def _backend_write(writer: EventWriter) -> str:
    return "_write_postgres" if writer.copy_postgres is not None else "_write_sqlite"


def test_a_write_failing_on_the_connection_is_tried_again_and_written_once(store, monkeypatch):
    # Given: the first try fails as a dropped connection would
    writer = store.app.writer
    real = getattr(writer, _backend_write(writer))
    calls: list[int] = []

    def flaky(rows):
        calls.append(len(rows))
        if len(calls) == 1:
            raise OperationalError("server closed the connection unexpectedly")
        real(rows)

    monkeypatch.setattr(writer, _backend_write(writer), flaky)
    message = new_message("retried")

    # When
    writer.write(writer.rows(message.collect_events()))

    # Then
    assert calls == [1, 1]
    assert [type(e).__name__ for e in store.history(message.id)] == ["Received"]


def test_a_write_failing_every_time_raises_after_three_tries(store, monkeypatch):
    writer = store.app.writer
    calls: list[int] = []

    def broken(rows):
        calls.append(len(rows))
        raise OperationalError("no route to host")

    monkeypatch.setattr(writer, _backend_write(writer), broken)

    with pytest.raises(OperationalError):
        writer.write(writer.rows(new_message("lost").collect_events()))
    assert len(calls) == 3


def test_a_mapper_of_its_own_writes_what_it_chooses(tmp_path):
    # Given
    env = {**store_env(f"sqlite:///{tmp_path}/m.db"), "MAPPER_TOPIC": f"{__name__}:TaggingMapper"}
    app = Messages(env)
    message = new_message("tagged")
    expected = state(message)

    # When
    app.save(message)

    # Then: the library wrote, through that mapper
    assert app.writer is None
    assert [r.state[:3] for r in app.recorder.select_events(message.id)] == [b"TAG"]
    assert state(app.repository.get(message.id)) == expected
    app.close()


def test_with_an_aggregate_cache_a_saved_message_reads_back_as_saved(tmp_path):
    # Given: the library's cache, which its save() keeps up to date
    env = {**store_env(f"sqlite:///{tmp_path}/c.db"), "AGGREGATE_CACHE_MAXSIZE": "100"}
    app = Messages(env)
    app.save(new_message("cached"))
    message = app.repository.get(new_message("cached").id)

    # When
    message.start_attempt("alpha", now=utcnow() + timedelta(seconds=1))
    app.save(message)

    # Then
    assert app.writer is None
    assert app.repository.get(message.id).status == "in_flight"
    app.close()


class TaggingMapper(Mapper[UUID]):
    """A mapper that writes something the writer would not."""

    def to_stored_event(self, domain_event: Any) -> StoredEvent:
        stored = super().to_stored_event(domain_event)
        tagged = b"TAG" + stored.state
        return StoredEvent(stored.originator_id, stored.originator_version, stored.topic, tagged)

    def to_domain_event(self, stored_event: StoredEvent) -> Any:
        event = stored_event
        untagged = event.state.removeprefix(b"TAG")
        return super().to_domain_event(
            StoredEvent(event.originator_id, event.originator_version, event.topic, untagged)
        )


def test_postgres_followers_of_the_log_never_skip_a_row_committed_late(pg_schema):
    """Four writers at once while a follower reads by position: with the table lock, positions are
    visible in commit order, so nothing lands behind a position the follower has passed."""
    url, schema = pg_schema
    stores = [MessageStore(url, schema=schema) for _ in range(4)]
    stop = threading.Event()

    def keep_writing(store: MessageStore) -> None:
        writer = store.app.writer
        while not stop.is_set():
            writer.write(writer.rows(e for _ in range(20) for e in new_message(uuid4().hex).collect_events()))

    threads = [threading.Thread(target=keep_writing, args=(s,), daemon=True) for s in stores]
    table = sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier("messages_events"))
    seen: set[int] = set()
    last = 0
    with psycopg.connect(psycopg_conninfo(url), autocommit=True) as follower:
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 2
        query = sql.SQL("SELECT notification_id FROM {} WHERE notification_id > %s ORDER BY 1").format(table)
        while time.monotonic() < deadline:
            for (position,) in follower.execute(query, (last,)).fetchall():
                seen.add(position)
                last = position
        stop.set()
        for thread in threads:
            thread.join(10)
        query = sql.SQL("SELECT notification_id FROM {} WHERE notification_id <= %s").format(table)
        written = {position for (position,) in follower.execute(query, (last,)).fetchall()}
    for store in stores:
        store.close()

    assert len(seen) > 100
    assert written - seen == set()


def test_the_log_of_a_store_with_a_mapper_of_its_own_reads_through_that_mapper(tmp_path, monkeypatch):
    # Given: the library takes MAPPER_TOPIC from the process environment too
    monkeypatch.setenv("MAPPER_TOPIC", f"{__name__}:TaggingMapper")
    store = MessageStore(f"sqlite:///{tmp_path}/l.db")
    message = new_message("logged")
    written = list(message.pending_events)
    store.commit([Change(load=lambda: message)])

    # When
    entries, _last = store.read_events(0, 10)

    # Then
    assert store.log.raw is False
    assert [event for _position, event in entries] == written
    store.close()
