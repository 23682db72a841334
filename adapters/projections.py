"""Projections: SQL read models that follow the event log, exactly once.

Each batch of events is applied and the projection's tracking position advanced in ONE
transaction; the position only moves forward from the value read at the start of the batch, so
a second runner (another node) that applied the same batch first makes ours roll back.

An event a follower cannot handle (a NUL that PostgreSQL text refuses, a value too long for its
column; for the publishers that share this machinery, a value too long for an AMQP short string)
would otherwise fail its batch forever and stall every event behind it. Such a *poison* event is
parked instead (``parked_events``, in the same transaction as the position that moves past it) —
only when it fails on its own with a data error: a failed batch is split and its halves applied,
down to single events (``ProjectionRunner.settle``), and an error that says a service is down is
raised as before, to be retried (``is_poison``).
"""

from __future__ import annotations

import multiprocessing
import time
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from dataclasses import dataclass
from functools import partial
from typing import Protocol
from uuid import UUID

import structlog
from eventsourcing.domain import DomainEvent
from sqlalchemy import (
    Column,
    Connection,
    Engine,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.exc import (
    IntegrityError,
    InternalError,
    OperationalError,
    ProgrammingError,
)

from adapters.event_log import LogEntry
from adapters.event_store import MessageStore
from adapters.parked_events import (
    SHADOW_PARKS,
    Parked,
    client_message_id,
    describe_poison,
    is_poison,
    log_parked,
    park,
    parked_events,
    record_parked,
)
from adapters.sql import metadata

log = structlog.get_logger(__name__)

tracking = Table(
    "smeg_tracking",
    metadata,
    Column("projection", String(64), primary_key=True),
    Column("position", Integer, nullable=False),
)

#: The writes a projection prepared, made inside the runner's transaction.
Write = Callable[[Connection], None]

#: Every stored event of each of these messages, in version order (``MessageStore.histories``).
History = Callable[[Collection[UUID]], Mapping[UUID, Sequence[DomainEvent]]]


class Projection(Protocol):
    """A read model: its name, its tables, and how a batch of events changes them."""

    name: str

    @property
    def tables(self) -> list[Table]:
        """Every table the projection writes (the rebuild shadows and swaps them)."""
        ...

    def retarget(self, tables: dict[str, Table]) -> Projection:
        """The same projection writing to ``tables`` (keyed by live table name)."""
        ...

    def prepare(self, connection: Connection, events: Sequence[DomainEvent], history: History) -> Write:
        """Read what the events (store order) need and fold them; return the write to make.

        Reads only: on SQLite the write lock is taken by the first write, so the runner calls
        every projection's ``prepare`` before any write and holds the lock for the writes alone.
        ``history`` reads messages' earlier events from the store, for facts a projection does
        not keep in a table of its own.
        """
        ...

    def clear(self, connection: Connection) -> None:
        """Delete every row (for a rebuild)."""
        ...


class ProjectionRunner:
    """Follows the store's log and applies it to the projections, batch by batch.

    Args:
        store: the event store to read.
        engine: where the read models and the tracking rows live.
        projections: what to maintain; all share one position.
        name: the tracking name.
        parks_as: appended to a projection's name for the events it parks (a rebuild's runners
            park under ``<name>__rebuild`` until the swap).
    """

    def __init__(
        self,
        store: MessageStore,
        engine: Engine,
        projections: Sequence[Projection],
        *,
        name: str = "read_models",
        batch: int = 1000,
        parks_as: str = "",
    ) -> None:
        self.store, self.engine, self.projections = store, engine, projections
        self.name, self.batch, self.parks_as = name, batch, parks_as
        #: The position ``step_together`` last committed, so its next step need not read it back;
        #: a move by anyone else makes that step's advance fail, and the position is read again.
        self.known_position: int | None = None
        #: Events this runner parked (this process), per projection and event.
        self.parked = 0
        create_tables(engine)

    def position(self) -> int:
        with self.engine.connect() as connection:
            return read_position(connection, self.name)

    def step(self) -> int:
        """Apply one batch; return how many events it held (0 when caught up or lost a race)."""
        start = self.position()
        entries, end = self.store.read_events(start, self.batch)
        if end == start:
            return 0
        return self.settle(start, entries, end)

    def apply_batch(self, start: int, end: int, events: Sequence[DomainEvent]) -> int:
        """Apply ``events`` (positions after ``start`` up to ``end``) and move the position, in one tx.

        Raises what the projections raise (nothing is parked here: see ``settle``).
        """
        return len(events) if self._apply(start, end, events) else 0

    def settle(self, start: int, entries: Sequence[LogEntry], end: int) -> int:
        """Apply ``entries`` (positions after ``start`` up to ``end``) as one batch; if it fails on
        bad data, apply its halves (splitting again where they fail) and park each event that
        fails on its own. Returns how many events were settled (applied or parked); 0 when
        another runner moved the position first. Outages and other errors are raised.

        Splitting costs about two transactions per halving around each poison event, and only
        after a batch failed; a batch that succeeds is still one transaction.
        """
        try:
            done = self._apply(start, end, [event for _at, event in entries])
        except Exception as exc:
            if not is_poison(exc):
                raise
            log.warning(
                "projection_batch_isolating",
                projection=self.name,
                position=start,
                events=len(entries),
                error=describe_poison(exc),
            )
            done = self._split(start, entries, end, exc)
        return len(entries) if done else 0

    def catch_up(self) -> int:
        """Apply batches until the log's head; return how many events were applied."""
        total = 0
        while applied := self.step():
            total += applied
        return total

    def rebuild(self) -> int:
        """Clear every read model, its parked events and the position, then replay the whole log."""
        with self.engine.begin() as connection:
            for projection in self.projections:
                projection.clear(connection)
            connection.execute(parked_events.delete().where(parked_events.c.follower.in_(self.park_names)))
            connection.execute(tracking.delete().where(tracking.c.projection == self.name))
        return self.catch_up()

    @property
    def park_names(self) -> list[str]:
        """The follower names this runner's parked rows carry (one per projection)."""
        return [f"{projection.name}{self.parks_as}" for projection in self.projections]

    def _apply(self, start: int, end: int, events: Sequence[DomainEvent]) -> bool:
        """One transaction: the projections' writes and the position; False on a lost race."""
        try:
            with self.engine.begin() as connection:
                history = SharedHistory(self.store.histories)
                writes = [projection.prepare(connection, events, history) for projection in self.projections]
                if not self._advance(connection, start, end):
                    return False
                for write in writes:
                    write(connection)
        except IntegrityError as exc:
            if is_poison(exc):
                raise
            log.info("projection_race_lost", projection=self.name, position=start)
            return False
        return True

    def _split(self, start: int, entries: Sequence[LogEntry], end: int, failure: Exception) -> bool:
        """``entries`` failed together on bad data: settle each half, down to single events."""
        if len(entries) <= 1:
            return self._settle_alone(start, entries, end, failure)
        middle = len(entries) // 2
        at = entries[middle - 1][0]
        return self._segment(start, entries[:middle], at) and self._segment(at, entries[middle:], end)

    def _segment(self, start: int, entries: Sequence[LogEntry], end: int) -> bool:
        try:
            return self._apply(start, end, [event for _at, event in entries])
        except Exception as exc:
            if not is_poison(exc):
                raise
            return self._split(start, entries, end, exc)

    def _settle_alone(self, start: int, entries: Sequence[LogEntry], end: int, failure: Exception) -> bool:
        """One event failed on its own: park it for the projections that cannot take it, apply it
        to the others (each in a savepoint), and move past it, in one transaction."""
        if not entries:
            raise failure
        [(at, event)] = entries
        message_id = client_message_id(self.store, event)
        parked: list[Parked] = []
        try:
            with self.engine.begin() as connection:
                # The position first: on SQLite this write opens the transaction, so that the
                # savepoints below are nested in it (pysqlite starts none for a SAVEPOINT).
                if not self._advance(connection, start, end):
                    return False
                if len(self.projections) == 1:
                    parked.append(park(self.park_names[0], at, event, failure, message_id))
                else:
                    history = SharedHistory(self.store.histories)
                    for projection, name in zip(self.projections, self.park_names, strict=True):
                        try:
                            with connection.begin_nested():
                                projection.prepare(connection, [event], history)(connection)
                        except Exception as exc:
                            if not is_poison(exc):
                                raise
                            parked.append(park(name, at, event, exc, message_id))
                record_parked(connection, parked)
        except IntegrityError as exc:
            if is_poison(exc):
                raise
            log.info("projection_race_lost", projection=self.name, position=start)
            return False
        self.parked += len(parked)
        log_parked(parked)
        return True

    def _advance(self, connection: Connection, start: int, end: int) -> bool:
        return advance_tracking(connection, self.name, start, end)


class SharedHistory:
    """One batch's reads of messages' histories, shared by its projections: each message is read
    from the store at most once per batch, however many projections miss it."""

    def __init__(self, read: History) -> None:
        self.read = read
        self.seen: dict[UUID, Sequence[DomainEvent]] = {}

    def __call__(self, ids: Collection[UUID]) -> Mapping[UUID, Sequence[DomainEvent]]:
        wanted = [key for key in ids if key not in self.seen]
        if wanted:
            found = self.read(wanted)
            for key in wanted:
                self.seen[key] = found.get(key, ())
        return {key: self.seen[key] for key in ids if self.seen[key]}


def create_tables(engine: Engine) -> None:
    """Create our tables if missing and bring older ones up to date (each read model registers
    its ``upgrades`` in ``metadata.info``); a concurrent first start by another process is
    tolerated."""
    for attempt in range(3):
        try:
            metadata.create_all(engine)
            with engine.begin() as connection:
                for upgrade in metadata.info.get("upgrades", ()):
                    upgrade(connection)
            return
        except (IntegrityError, ProgrammingError, OperationalError, InternalError):
            if attempt == 2:
                raise
            time.sleep(0.2 * (attempt + 1))


def read_position(connection: Connection, name: str) -> int:
    """The tracked position of ``name`` (0 before its first batch)."""
    value = connection.scalar(select(tracking.c.position).where(tracking.c.projection == name))
    return int(value or 0)


def advance_tracking(connection: Connection, name: str, start: int, end: int) -> bool:
    """Move ``name`` from ``start`` to ``end``; False when another runner moved it first.

    A concurrent first insert raises IntegrityError, which rolls the caller's transaction back.
    """
    if start == 0:
        exists = connection.scalar(select(tracking.c.position).where(tracking.c.projection == name))
        if exists is None:
            connection.execute(insert(tracking).values(projection=name, position=end))
            return True
    result = connection.execute(
        update(tracking)
        .where(tracking.c.projection == name, tracking.c.position == start)
        .values(position=end)
    )
    return result.rowcount == 1


#: PostgreSQL's SQLSTATE for a transaction it rolled back to break a deadlock.
DEADLOCK_DETECTED = "40P01"


class _RaceLost(Exception):
    """Another runner advanced one of the positions first: roll the whole batch back."""


def _advance_or_raise(connection: Connection, *, name: str, start: int, end: int) -> None:
    if not advance_tracking(connection, name, start, end):
        raise _RaceLost(name)


def step_together(store: MessageStore, runners: Sequence[ProjectionRunner], batch: int = 1000) -> int:
    """One batch for several runners: one read and decode of the log, one transaction.

    Each runner applies the events after its own position and advances its own tracking row, all
    in the same transaction (one commit instead of one per read model). If any runner finds its
    position moved by another node, the whole batch rolls back and the next step starts afresh.
    Positions this function committed are kept on the runners and not read back (four queries a
    step, a sixth of the projector child's time); the advance's check catches a stale one.
    Returns how many events the furthest-behind runner applied.
    """
    if not runners:
        return 0
    engine = runners[0].engine
    positions = [runner.known_position for runner in runners]
    if None in positions:
        with engine.connect() as connection:
            positions = [read_position(connection, runner.name) for runner in runners]
    known = [position for position in positions if position is not None]
    start = min(known)
    decoded, end = store.read_events(start, batch)
    if end == start:
        return 0
    applied = 0
    advanced: list[ProjectionRunner] = []
    history = SharedHistory(store.histories)
    try:
        with engine.begin() as connection:
            writes: list[Write] = []
            for runner, position in zip(runners, known, strict=True):
                events = [event for at, event in decoded if at > position]
                runner.known_position = position
                if not events:
                    continue
                writes += [p.prepare(connection, events, history) for p in runner.projections]
                writes.append(partial(_advance_or_raise, name=runner.name, start=position, end=end))
                advanced.append(runner)
                applied = max(applied, len(events))
            for write in writes:
                write(connection)
    except _RaceLost as exc:
        _forget(runners)
        log.info("projection_race_lost", projection=str(exc), position=start)
        return 0
    except Exception as exc:
        if is_poison(exc):
            # One of the runners cannot take an event of the batch: each runner settles the
            # batch on its own, so that only the ones that fail split it.
            log.warning(
                "projection_batch_failed", position=start, events=len(decoded), error=describe_poison(exc)
            )
            return _settle_each(runners, known, decoded, end)
        _forget(runners)
        if isinstance(exc, IntegrityError):
            log.info("projection_race_lost", projection="insert", position=start)
            return 0
        # Two nodes' runners at different positions may update the same rows in different orders.
        if isinstance(exc, OperationalError) and getattr(exc.orig, "sqlstate", None) == DEADLOCK_DETECTED:
            log.info("projection_race_lost", projection="deadlock", position=start)
            return 0
        raise
    except BaseException:
        _forget(runners)
        raise
    for runner in advanced:
        runner.known_position = end
    return applied


def _settle_each(
    runners: Sequence[ProjectionRunner], positions: Sequence[int], decoded: Sequence[LogEntry], end: int
) -> int:
    """After a failed batch: each runner applies its part on its own (``ProjectionRunner.settle``)."""
    applied = 0
    try:
        for runner, position in zip(runners, positions, strict=True):
            entries = [(at, event) for at, event in decoded if at > position]
            if not entries:
                continue
            if not runner.settle(position, entries, end):
                _forget(runners)
                return 0
            runner.known_position = end
            applied = max(applied, len(entries))
    except BaseException:
        _forget(runners)
        raise
    return applied


def _forget(runners: Sequence[ProjectionRunner]) -> None:
    for runner in runners:
        runner.known_position = None


class ShadowRebuild:
    """Rebuild read models beside the live ones, then swap them in, in one transaction.

    Safe while ``smeg run`` keeps applying events to the live tables: the swap renames the shadow
    tables into place and sets the live tracking position to the shadow's, so the live runner
    continues from exactly where the rebuild stopped (its in-flight batch, if any, finds the
    position moved and rolls back).

    With ``workers`` > 1 the log up to its head at the start is replayed by that many processes,
    each taking the messages whose id falls in its partition (``event_log.in_partition``): a
    message's events stay in order within one process, per-message rows are disjoint, and the
    counters only ever add, so the partitions' sums add up to the one-process result. The events
    written meanwhile are then applied by this process before the swap. The shadow tables get
    their secondary indexes after the bulk load. Events the rebuild parks are recorded under
    ``<projection>__rebuild`` and become the projection's parked events at the swap (replacing
    the live ones), so a rebuild after a fix applies what was parked before.
    """

    def __init__(
        self,
        store: MessageStore,
        engine: Engine,
        projections: Sequence[Projection],
        *,
        name: str | None = None,
        batch: int = 20_000,
        workers: int = 1,
    ) -> None:
        self.store, self.engine, self.batch, self.workers = store, engine, batch, workers
        self.projections = list(projections)
        self.names = [name] if name else [projection.name for projection in projections]
        self.token = uuid.uuid4().hex[:8]
        self.shadow_metadata = MetaData()
        self.live = [table for projection in projections for table in projection.tables]
        self.shadows = {table.name: _shadow(table, self.shadow_metadata) for table in self.live}
        self.runner = ProjectionRunner(
            store,
            engine,
            [projection.retarget(self.shadows) for projection in projections],
            name=f"{name or 'all'}__rebuild",
            batch=batch,
            parks_as=SHADOW_PARKS,
        )

    def run(self, progress: Callable[[int, int], None] = lambda _done, _head: None) -> int:
        """Replay the whole log into the shadow tables, swap them in; return events applied."""
        self.shadow_metadata.drop_all(self.engine)
        self.shadow_metadata.create_all(self.engine)
        with self.engine.begin() as connection:
            connection.execute(tracking.delete().where(tracking.c.projection == self.runner.name))
            connection.execute(
                parked_events.delete().where(parked_events.c.follower.in_(self.runner.park_names))
            )
        head, total = self.store.max_position(), 0
        if self.workers > 1 and head > 0:
            total = self._replay_partitioned(head, progress)
        while self.runner.position() < head and (applied := self.runner.step()):
            total += applied
            progress(self.runner.position(), max(head, self.runner.position()))
        for table in self.live:
            for index in _indexes(table, self.shadows[table.name], self.token):
                index.create(self.engine)
        total += self.runner.catch_up()
        self._swap()
        return total

    def _replay_partitioned(self, head: int, progress: Callable[[int, int], None]) -> int:
        """Replay positions 1..head in ``workers`` processes; leave the shadow position at head."""
        job = _Partitions(
            url=self.store.url,
            engine_url=self.engine.url.render_as_string(hide_password=False),
            schema=self.store.schema,
            projections=[type(projection) for projection in self.projections],
            name=self.runner.name,
            count=self.workers,
            head=head,
            batch=self.batch,
        )
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=self.workers, mp_context=context) as pool:
            futures = [pool.submit(_replay_partition, job, index) for index in range(self.workers)]
            while not all(future.done() for future in futures):
                wait(futures, timeout=0.5, return_when=FIRST_EXCEPTION)
                if any(future.done() and future.exception() for future in futures):
                    break
                with self.engine.connect() as connection:
                    done = min(read_position(connection, job.partition_name(i)) for i in range(job.count))
                progress(done, head)
            total = sum(future.result() for future in futures)
        with self.engine.begin() as connection:
            for index in range(job.count):
                connection.execute(
                    tracking.delete().where(tracking.c.projection == job.partition_name(index))
                )
            connection.execute(insert(tracking).values(projection=self.runner.name, position=head))
        progress(head, head)
        return total

    def _swap(self) -> None:
        schema = self.engine.get_execution_options().get("schema_translate_map", {}).get(None)
        prefix = f'"{schema}".' if schema else ""
        with self.engine.begin() as connection:
            position = read_position(connection, self.runner.name)
            for table in self.live:
                old = f"{table.name}_old_{self.token}"
                shadow = self.shadows[table.name].name
                connection.execute(text(f'ALTER TABLE {prefix}"{table.name}" RENAME TO "{old}"'))
                connection.execute(text(f'ALTER TABLE {prefix}"{shadow}" RENAME TO "{table.name}"'))
                connection.execute(text(f'DROP TABLE {prefix}"{old}"'))
            connection.execute(tracking.delete().where(tracking.c.projection == self.runner.name))
            for name in self.names:
                connection.execute(tracking.delete().where(tracking.c.projection == name))
                connection.execute(insert(tracking).values(projection=name, position=position))
            # The events the rebuild parked are now the live tables' parked events.
            for projection in self.projections:
                follower = parked_events.c.follower
                connection.execute(parked_events.delete().where(follower == projection.name))
                connection.execute(
                    update(parked_events)
                    .where(follower == f"{projection.name}{SHADOW_PARKS}")
                    .values(follower=projection.name)
                )


@dataclass(frozen=True)
class _Partitions:
    """What a partition process needs to rebuild its share (picklable: no live objects)."""

    url: str
    engine_url: str
    schema: str
    projections: list[type[Projection]]
    name: str
    count: int
    head: int
    batch: int
    apply_every: int = 200_000

    def partition_name(self, index: int) -> str:
        return f"{self.name}#{index}"


def _replay_partition(job: _Partitions, index: int) -> int:
    """In a spawned process: apply the events of partition ``index`` up to ``job.head``."""
    from adapters.gc_policy import collect_less
    from adapters.sql import make_engine

    collect_less()
    store = MessageStore(job.url, schema=job.schema, timeout=300)
    engine = make_engine(job.engine_url, schema=job.schema, statement_timeout_s=300)
    try:
        live = [projection() for projection in job.projections]
        shadows = {table.name: _shadow(table, MetaData()) for p in live for table in p.tables}
        runner = ProjectionRunner(
            store,
            engine,
            [projection.retarget(shadows) for projection in live],
            name=job.partition_name(index),
            batch=job.batch,
            parks_as=SHADOW_PARKS,
        )

        position, applied, read_to = 0, 0, 0
        pending: list[LogEntry] = []
        while read_to < job.head:
            entries, last = store.read_events(
                read_to, job.batch, until=job.head, partition=(index, job.count)
            )
            if last == read_to:
                break
            pending += entries
            read_to = last
            if len(pending) >= job.apply_every or read_to >= job.head:
                applied += runner.settle(position, pending, read_to)
                position, pending = read_to, []
        if pending:
            applied += runner.settle(position, pending, read_to)
        return applied
    finally:
        store.close()
        engine.dispose()


def _shadow(table: Table, metadata: MetaData) -> Table:
    """A copy of ``table`` named ``<name>_next``, without its secondary indexes (see ``_indexes``)."""
    columns = []
    for column in table.columns:
        copy = column._copy()
        copy.index = None
        columns.append(copy)
    return Table(f"{table.name}_next", metadata, *columns)


def _indexes(table: Table, shadow: Table, token: str) -> list[Index]:
    """``table``'s secondary indexes on ``shadow``: built once after the bulk load, which is
    cheaper than keeping them up to date row by row while it runs."""
    return [
        Index(
            f"{index.name}_{token}",
            *[shadow.c[c.name] for c in index.columns],
            unique=bool(index.unique),
            **index.dialect_kwargs,  # a partial index's WHERE (written without table names)
        )
        for index in table.indexes
    ]
