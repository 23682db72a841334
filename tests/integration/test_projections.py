"""Read models follow the log exactly once, on SQLite and PostgreSQL; rebuilds equal increments."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from eventsourcing.domain import DomainEvent
from sqlalchemy import Connection, Engine, Table, inspect, select, text
from sqlalchemy.exc import OperationalError

from adapters.event_store import Change, MessageStore
from adapters.projections import History, ProjectionRunner, ShadowRebuild, Write, read_position, tracking
from adapters.sql import make_engine
from adapters.status_view import (
    FAILED_INDEX,
    REQUESTED_INDEX,
    UNFINISHED_INDEX,
    MessageStatusProjection,
    failed_index,
    message_status,
    requested_index,
    unfinished,
    unfinished_index,
)
from domain.backoff import BackoffPolicy
from domain.message import Message
from smeg_actors.runtime.read_models import all_projections

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=timezone.utc)
POLICY = BackoffPolicy(initial=1, factor=3, max_delay=60, max_attempts=3)


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: Any, tmp_path: Path) -> Iterator[tuple[MessageStore, Engine]]:
    if request.param == "sqlite":
        url, schema = f"sqlite:///{tmp_path}/p.db", ""
    else:
        url, schema = request.getfixturevalue("pg_schema")
    store = MessageStore(url, schema=schema)
    engine = make_engine(url, schema=schema)
    yield store, engine
    store.close()
    engine.dispose()


def seed(store: MessageStore, count: int, *, seed_value: int = 7) -> None:
    """A scripted history: deliveries, retries, permanent failures, exhaustion, redrives."""
    rng = random.Random(seed_value)
    for start in range(0, count, 100):
        ids = [f"m-{i}" for i in range(start, min(start + 100, count))]
        outcomes = store.commit(
            [Change(load=_receiver(m, T0 + timedelta(seconds=i))) for i, m in enumerate(ids)]
        )
        messages = [o.message for o in outcomes if o.message is not None]
        for message in messages:
            _walk(message, rng)
        store.commit([Change(load=lambda m=m: store.get(m.id), cached=m) for m in messages])


def _receiver(message_id: str, now: datetime) -> Any:
    return lambda: Message.receive(
        message_id=message_id,
        channel=random.choice(["sms", "im"]),
        to="+447700900123",
        body="x",
        correlation_id=f"c-{message_id}",
        now=now,
    )


def _walk(message: Message, rng: random.Random) -> None:
    now = message.created_on
    for _ in range(6):
        now += timedelta(minutes=1)
        message.start_attempt(rng.choice(["a", "b"]), now=now)
        roll = rng.random()
        if roll < 0.6:
            message.record_delivery("pid", now=now, latency_ms=12.5)
            return
        if roll < 0.7:
            message.record_permanent_failure(
                "http 400", error="PermanentDeliveryError", now=now, status_code=400
            )
        else:
            message.record_transient_failure(
                "http 503", error="TransientDeliveryError", policy=POLICY, now=now, status_code=503
            )
        if message.status == "failed":
            if message.permanent or rng.random() < 0.5:
                return
            message.request_retry("redrive", now=now)
        elif message.retry_at is not None:
            now = message.retry_at


def rows(engine: Engine, table: Table = message_status) -> list[tuple[Any, ...]]:
    with engine.connect() as connection:
        return sorted(tuple(r) for r in connection.execute(select(table)))


def test_incremental_projection_equals_full_rebuild(backend: tuple[MessageStore, Engine]) -> None:
    # Given a history of a thousand messages
    store, engine = backend
    seed(store, 1000)
    # When it is applied in small batches
    incremental = ProjectionRunner(
        store, engine, [MessageStatusProjection()], name="message_status", batch=37
    )
    incremental.catch_up()
    step_by_step = rows(engine)
    # Then a full rebuild gives the same rows, and catching up again applies nothing
    assert incremental.rebuild() == sum(1 for _ in store.iter_log())
    assert rows(engine) == step_by_step
    assert incremental.catch_up() == 0
    assert len(step_by_step) == 1000
    assert {r[3] for r in step_by_step} <= {"delivered", "failed", "received"}


class WrappedStatus:
    """``message_status``'s projection, wrapped so a test can make its writes misbehave."""

    name = "message_status"

    def __init__(self) -> None:
        self.inner = MessageStatusProjection()

    @property
    def tables(self) -> list[Table]:
        return self.inner.tables

    def retarget(self, tables: dict[str, Table]) -> Any:
        return self.inner.retarget(tables)

    def clear(self, connection: Connection) -> None:
        self.inner.clear(connection)


class Exploding(WrappedStatus):
    """Wraps a projection and fails once, after writing, inside the runner's transaction."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = True

    def prepare(self, connection: Connection, events: Sequence[DomainEvent], history: History) -> Write:
        write = self.inner.prepare(connection, events, history)

        def write_then_fail(connection: Connection) -> None:
            write(connection)
            if self.armed:
                self.armed = False
                raise RuntimeError("killed mid-batch")

        return write_then_fail


def test_runner_killed_mid_batch_double_counts_nothing(backend: tuple[MessageStore, Engine]) -> None:
    store, engine = backend
    seed(store, 300)
    runner = ProjectionRunner(store, engine, [Exploding()], name="message_status", batch=100)
    with pytest.raises(RuntimeError):
        runner.step()
    assert runner.position() == 0 and rows(engine) == []
    runner.catch_up()
    expected = ProjectionRunner(store, engine, [MessageStatusProjection()], name="check", batch=1000)
    assert runner.position() == store.max_position()
    after = rows(engine)
    expected.rebuild()
    assert rows(engine) == after


def test_two_concurrent_runners_apply_each_event_once(backend: tuple[MessageStore, Engine]) -> None:
    store, engine = backend
    seed(store, 600)
    reference = ProjectionRunner(store, engine, [MessageStatusProjection()], name="reference", batch=1000)
    reference.catch_up()
    expected = rows(engine)
    with engine.begin() as connection:
        connection.execute(message_status.delete())
    errors: list[BaseException] = []

    def run() -> None:
        try:
            ProjectionRunner(
                store, engine, [MessageStatusProjection()], name="message_status", batch=25
            ).catch_up()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors
    ProjectionRunner(store, engine, [MessageStatusProjection()], name="message_status").catch_up()
    assert rows(engine) == expected


def test_shadow_rebuild_swaps_in_while_the_live_runner_keeps_going(
    backend: tuple[MessageStore, Engine],
) -> None:
    # Given a live runner that is caught up, and more events arriving during the rebuild
    store, engine = backend
    seed(store, 400)
    live = ProjectionRunner(store, engine, [MessageStatusProjection()], name="message_status", batch=50)
    live.catch_up()
    stop = threading.Event()

    def keep_applying() -> None:
        while not stop.is_set():
            live.step()

    follower = threading.Thread(target=keep_applying)
    follower.start()
    # When a rebuild runs and more messages arrive
    try:
        seed(store, 500, seed_value=9)
        ShadowRebuild(store, engine, [MessageStatusProjection()], name="message_status", batch=64).run()
    finally:
        stop.set()  # the follower's loop ends whatever happened
    follower.join(60)
    live.catch_up()
    # Then the swapped-in tables equal a from-scratch projection of the whole log
    after = rows(engine)
    fresh = ProjectionRunner(store, engine, [MessageStatusProjection()], name="message_status")
    fresh.rebuild()
    assert rows(engine) == after
    assert len(after) == 500


def test_stepping_all_read_models_together_from_two_threads_applies_each_event_once(
    backend: tuple[MessageStore, Engine],
) -> None:
    # Given a history, and two followers stepping all read models in one transaction each
    from adapters.projections import step_together
    from smeg_actors.runtime.read_models import runners

    store, engine = backend
    seed(store, 500)
    errors: list[BaseException] = []

    def follow() -> None:
        from tests.waiting import wait_until

        try:
            mine = runners(store, engine)
            wait_until(
                lambda: (
                    not step_together(store, mine, batch=40)
                    and all(r.position() >= store.max_position() for r in mine)
                ),
                60,
                0,
                message=lambda: f"not at the head ({store.max_position()}): {[r.position() for r in mine]}",
            )
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=follow) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    # Then the tables equal a from-scratch replay
    from adapters.stats_view import DeliveryStatsProjection, FailureReasonsProjection, delivery_stats_hourly
    from adapters.stats_view import failures_by_reason as reasons_table

    assert not errors
    together = rows(engine)
    stats, reasons = rows(engine, delivery_stats_hourly), rows(engine, reasons_table)
    ProjectionRunner(store, engine, [MessageStatusProjection()], name="message_status").rebuild()
    ProjectionRunner(store, engine, [DeliveryStatsProjection()], name="delivery_stats_hourly").rebuild()
    ProjectionRunner(store, engine, [FailureReasonsProjection()], name="failures_by_reason").rebuild()
    assert rows(engine) == together and len(together) == 500
    assert rows(engine, delivery_stats_hourly) == stats and stats
    assert rows(engine, reasons_table) == reasons


def test_partitioned_rebuild_equals_a_one_process_rebuild_table_for_table(
    backend: tuple[MessageStore, Engine],
) -> None:
    # Given a history of every kind, rebuilt by one process
    store, engine = backend
    seed(store, 900, seed_value=11)
    projections = all_projections()
    ShadowRebuild(store, engine, projections, batch=97).run()
    one_process = {table.name: rows(engine, table) for p in projections for table in p.tables}
    # When three processes rebuild it, partitioned by message id
    done: list[tuple[int, int]] = []
    applied = ShadowRebuild(store, engine, projections, batch=97, workers=3).run(
        lambda position, head: done.append((position, head))
    )
    # Then every table holds the same rows, the position is the head, and the indexes are back
    assert applied == store.max_position()
    assert {table.name: rows(engine, table) for p in projections for table in p.tables} == one_process
    assert all(len(rows) > 0 for rows in one_process.values())
    assert done[-1] == (store.max_position(), store.max_position())
    with engine.connect() as connection:
        positions = {p.name: read_position(connection, p.name) for p in projections}
        leftovers = connection.execute(
            select(tracking.c.projection).where(tracking.c.projection.like("%rebuild%"))
        ).all()
    assert set(positions.values()) == {store.max_position()} and leftovers == []
    schema = engine.get_execution_options().get("schema_translate_map", {}).get(None)
    found = inspect(engine).get_indexes("message_status", schema=schema)
    indexed = {str(index["name"]).rsplit("_", 1)[0] for index in found}
    assert indexed == {index.name for index in message_status.indexes}


def test_events_of_a_message_without_a_row_set_nothing_and_create_no_row(
    backend: tuple[MessageStore, Engine],
) -> None:
    # Given two messages applied, then one row lost (say, deleted by hand)
    store, engine = backend
    outcomes = store.commit([Change(load=_receiver(m, T0)) for m in ("kept", "lost")])
    runner = ProjectionRunner(store, engine, [MessageStatusProjection()], name="message_status")
    runner.catch_up()
    lost = outcomes[1].message
    assert lost is not None
    with engine.begin() as connection:
        connection.execute(message_status.delete().where(message_status.c.id == lost.id))
    # When both are attempted and delivered, in separate batches from their Received
    for outcome in outcomes:
        assert outcome.message is not None
        message = store.get(outcome.message.id)
        message.start_attempt("a", now=T0 + timedelta(seconds=1))
        message.record_delivery("pid", now=T0 + timedelta(seconds=2), latency_ms=3.0)
        store.commit([Change(load=lambda m=message: store.get(m.id), cached=message)])
    runner.catch_up()
    # Then the kept row has every column of its events, and the lost one stays absent
    with engine.connect() as connection:
        found = connection.execute(select(message_status)).mappings().all()
    assert [r["message_id"] for r in found] == ["kept"]
    kept = found[0]
    assert (kept["status"], kept["attempts"], kept["last_provider"]) == ("delivered", 1, "a")
    assert kept["retry_at"] is None and kept["delivered_at"] is not None
    assert runner.position() == store.max_position()


class FailingWrite(WrappedStatus):
    """A projection whose write raises a database error with the given SQLSTATE."""

    def __init__(self, sqlstate: str) -> None:
        super().__init__()
        self.sqlstate = sqlstate

    def prepare(self, connection: Connection, events: Sequence[DomainEvent], history: History) -> Write:
        write = self.inner.prepare(connection, events, history)
        sqlstate = self.sqlstate

        def write_then_fail(connection: Connection) -> None:
            write(connection)
            orig = type("DriverError", (Exception,), {"sqlstate": sqlstate})("driver says no")
            raise OperationalError("UPDATE message_status …", {}, orig)

        return write_then_fail


def test_a_deadlock_broken_by_the_database_is_a_lost_race_and_other_errors_are_raised(
    backend: tuple[MessageStore, Engine],
) -> None:
    from adapters.projections import DEADLOCK_DETECTED, step_together

    store, engine = backend
    seed(store, 50)
    deadlocked = ProjectionRunner(store, engine, [FailingWrite(DEADLOCK_DETECTED)], name="message_status")
    assert step_together(store, [deadlocked]) == 0
    assert deadlocked.position() == 0 and rows(engine) == []
    broken = ProjectionRunner(store, engine, [FailingWrite("08006")], name="message_status")
    with pytest.raises(OperationalError):
        step_together(store, [broken])
    assert broken.position() == 0 and rows(engine) == []


def test_step_together_keeps_its_positions_and_a_stale_one_loses_the_race_without_double_applying(
    backend: tuple[MessageStore, Engine],
) -> None:
    from sqlalchemy import event as sa_event

    from adapters.projections import step_together

    store, engine = backend
    seed(store, 200)
    ours = ProjectionRunner(store, engine, [MessageStatusProjection()], name="message_status")
    assert step_together(store, [ours], batch=100) == 100
    # A second step does not read its position back from the tracking table
    reads: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "smeg_tracking" in statement:
            reads.append(statement)

    sa_event.listen(engine, "before_cursor_execute", count)
    try:
        assert step_together(store, [ours], batch=100) == 100
    finally:
        sa_event.remove(engine, "before_cursor_execute", count)
    assert reads == []
    # When another node's runner moves the position on, our kept position is stale: the step
    # rolls back, the next one reads the position again, and nothing is applied twice
    assert store.max_position() > 250
    theirs = ProjectionRunner(store, engine, [MessageStatusProjection()], name="message_status", batch=50)
    assert theirs.step() == 50
    assert step_together(store, [ours], batch=100) == 0
    while step_together(store, [ours], batch=100):
        pass
    assert ours.position() == store.max_position()
    after = rows(engine)
    ProjectionRunner(store, engine, [MessageStatusProjection()], name="message_status").rebuild()
    assert rows(engine) == after


def test_a_held_message_is_held_in_message_status_and_due_when_its_hold_ends(
    backend: tuple[MessageStore, Engine],
) -> None:
    # Given a message held for 20 minutes after a transient failure, and one still waiting
    store, engine = backend
    store.commit([Change(load=_receiver(m, T0)) for m in ("held", "waiting")])
    until = T0 + timedelta(minutes=20)

    def fail_then_hold(message: Message) -> None:
        message.start_attempt("a", now=T0)
        message.record_transient_failure("http 503", error="E", policy=POLICY, now=T0)
        message.hold("a", until=until, reason="circuit open", now=T0 + timedelta(seconds=1))

    assert store.update(Message.create_id("held"), fail_then_hold).saved

    # When the read model catches up
    ProjectionRunner(store, engine, [MessageStatusProjection()], name="message_status").catch_up()

    # Then it is held until its hold ends, attempts unchanged, and the scheduler finds it due then
    with engine.connect() as connection:
        row = connection.execute(select(message_status).where(message_status.c.message_id == "held")).one()
    assert (row.status, row.attempts) == ("held", 1)
    assert row.retry_at.replace(tzinfo=timezone.utc) == until
    [page] = list(unfinished(engine, stale_after=60))
    assert dict(page)[Message.create_id("held")] == until
    swept = [i for p in unfinished(engine, stale_after=60, before=until + timedelta(seconds=1)) for i, _ in p]
    assert Message.create_id("held") in swept
    early = [i for p in unfinished(engine, stale_after=60, before=until) for i, _ in p]
    assert Message.create_id("held") not in early and Message.create_id("waiting") in early


def status_indexes(engine: Engine) -> dict[str, tuple[list[str], bool]]:
    """message_status's secondary indexes: name → (columns, partial)."""
    schema = engine.get_execution_options().get("schema_translate_map", {}).get(None)
    found = inspect(engine).get_indexes("message_status", schema=schema)
    return {str(ix["name"]): (list(ix["column_names"]), bool(ix.get("dialect_options", {}))) for ix in found}


#: message_status's secondary indexes: both partial (unfinished messages; failed ones by when).
TODAYS = {
    UNFINISHED_INDEX: (["status"], True),
    FAILED_INDEX: (["failed_at"], True),
    REQUESTED_INDEX: (["retry_at"], True),
}


def test_message_status_has_partial_indexes_of_unfinished_failed_and_requested_messages(
    backend: tuple[MessageStore, Engine],
) -> None:
    # Given
    store, engine = backend
    ProjectionRunner(store, engine, [MessageStatusProjection()], name="message_status")

    # Then: delivered rows are in no secondary index
    assert status_indexes(engine) == TODAYS


def test_an_older_message_status_gets_todays_index_and_keeps_its_rows(
    backend: tuple[MessageStore, Engine],
) -> None:
    # Given a table as it was before 2026-11-27: an index on each of message_id, status, retry_at
    store, engine = backend
    seed(store, 60)
    runner = ProjectionRunner(store, engine, [MessageStatusProjection()], name="message_status")
    runner.catch_up()
    before = rows(engine)
    schema = engine.get_execution_options().get("schema_translate_map", {}).get(None)
    table = f'"{schema}".message_status' if schema else "message_status"
    with engine.begin() as connection:
        unfinished_index.drop(connection)
        failed_index.drop(connection)
        requested_index.drop(connection)
        for column in ("message_id", "status", "retry_at"):  # (SQL: an Index object would join the Table)
            connection.execute(text(f"CREATE INDEX ix_message_status_{column} ON {table} ({column})"))
    assert len(status_indexes(engine)) == 3

    # When the read models start again
    ProjectionRunner(store, engine, [MessageStatusProjection()], name="message_status").catch_up()

    # Then
    assert status_indexes(engine) == TODAYS
    assert rows(engine) == before


def test_an_index_of_before_held_is_replaced_by_one_that_covers_held(
    backend: tuple[MessageStore, Engine],
) -> None:
    # Given the partial index as it was before 2026-12-07: without the held status
    store, engine = backend
    ProjectionRunner(store, engine, [MessageStatusProjection()], name="message_status")
    schema = engine.get_execution_options().get("schema_translate_map", {}).get(None)
    table = f'"{schema}".message_status' if schema else "message_status"
    with engine.begin() as connection:
        unfinished_index.drop(connection)
        connection.execute(
            text(
                f"CREATE INDEX {UNFINISHED_INDEX} ON {table} (status)"
                " WHERE status IN ('received', 'in_flight', 'backed_off')"
            )
        )
    assert "'held'" not in unfinished_predicate(engine)

    # When the read models start again
    ProjectionRunner(store, engine, [MessageStatusProjection()], name="message_status").catch_up()

    # Then the scheduler's query of held messages can use the index
    assert status_indexes(engine) == TODAYS
    assert all(
        f"'{s}'" in unfinished_predicate(engine) for s in ("received", "in_flight", "backed_off", "held")
    )


def unfinished_predicate(engine: Engine) -> str:
    schema = engine.get_execution_options().get("schema_translate_map", {}).get(None)
    [index] = [
        ix
        for ix in inspect(engine).get_indexes("message_status", schema=schema)
        if str(ix["name"]).startswith(UNFINISHED_INDEX)
    ]
    options = index.get("dialect_options", {})
    where = options.get("postgresql_where", options.get("sqlite_where"))
    return str(getattr(where, "text", where))


def test_a_rebuild_keeps_the_index_partial(backend: tuple[MessageStore, Engine]) -> None:
    # Given
    store, engine = backend
    seed(store, 60)

    # When
    ShadowRebuild(store, engine, [MessageStatusProjection()], name="message_status").run()

    # Then: the swapped-in table's indexes are the same partial ones (under the rebuild's names)
    found = status_indexes(engine)
    assert len(found) == len(TODAYS)
    for prefix, shape in TODAYS.items():
        assert [s for name, s in found.items() if name.startswith(prefix)] == [shape]
