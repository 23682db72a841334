"""``ShadowRebuild``: a read model rebuilt from the whole log into shadow tables beside the live
ones (in several processes, by partition of message ids, if asked), then swapped in in one
transaction (``smeg projections rebuild``).
"""

from __future__ import annotations

import multiprocessing
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from dataclasses import dataclass

from sqlalchemy import Engine, Index, MetaData, Table, insert, text, update

from adapters.event_log import LogEntry
from adapters.event_store import MessageStore
from adapters.parked_events import SHADOW_PARKS, parked_events
from adapters.projection_runner import Projection, ProjectionRunner
from adapters.tracking import read_position, tracking


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
