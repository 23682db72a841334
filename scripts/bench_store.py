"""Benchmark the event store: write Message histories, then read them all back.

For every combination of backend (SQLite file, PostgreSQL), recorder (``core``, ``sqlalchemy``)
and mode (``per-event``, ``batched``) it writes N messages × 3 events (Received, Attempted,
Delivered) through ``MessageStore.commit`` and then loads every aggregate with ``MessageStore.get``.

* ``per-event``: one ``commit()`` per event, i.e. 3 transactions per message.
* ``batched``: ``--batch`` aggregates per ``commit()``, 3 commits per batch (one per event type).

Each row gets a fresh database: a new SQLite file in a temp dir, or a new PostgreSQL schema
that the script creates and drops (CASCADE) afterwards.

Run it from the project root::

    .venv/bin/python scripts/bench_store.py
    .venv/bin/python scripts/bench_store.py --messages 2000 --batch 100 \
        --backends sqlite,postgres --recorders core,sqlalchemy --modes per-event,batched

PostgreSQL URL: ``SMEG_BENCH_POSTGRES_URL`` (default
``postgresql+psycopg://postgres@127.0.0.1:5432/test``). The machine may be noisy: compare the
core/sqlalchemy ratios printed at the end (same run), not the absolute figures across runs.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path
from uuid import UUID

import psycopg
from psycopg import sql
from sqlalchemy.engine import make_url

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent / "bench"))

from support import POSTGRES_URL, choices, one_line

from adapters.event_store import CORE, SQLALCHEMY, Change, MessageStore
from domain.message import DELIVERED, Message

SQLITE = "sqlite"
POSTGRES = "postgres"
PER_EVENT = "per-event"
BATCHED = "batched"

BACKENDS = (SQLITE, POSTGRES)
RECORDERS = (CORE, SQLALCHEMY)
MODES = (PER_EVENT, BATCHED)

EVENTS_PER_MESSAGE = 3


def now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class Row:
    backend: str
    recorder: str
    mode: str
    messages: int = 0
    write_seconds: float = 0.0
    read_seconds: float = 0.0
    skipped: str = ""
    note: str = ""

    @property
    def write_rate(self) -> float:
        return self.messages * EVENTS_PER_MESSAGE / self.write_seconds if self.write_seconds else 0.0

    @property
    def read_rate(self) -> float:
        return self.messages / self.read_seconds if self.read_seconds else 0.0


# --- database setup -----------------------------------------------------------------------------


def libpq_conninfo(url: str) -> str:
    """The libpq form of a SQLAlchemy URL (``postgresql+psycopg://`` → ``postgresql://``)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def with_search_path(url: str, schema: str) -> str:
    """The URL with ``options=-csearch_path=<schema>`` so unqualified tables land in ``schema``."""
    parsed = make_url(url)
    query = dict(parsed.query)
    query["options"] = f"-csearch_path={schema}"
    return parsed.set(query=query).render_as_string(hide_password=False)


def create_schema(url: str, schema: str) -> None:
    with psycopg.connect(libpq_conninfo(url), autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))


def drop_schema(url: str, schema: str) -> None:
    with psycopg.connect(libpq_conninfo(url), autocommit=True, connect_timeout=5) as conn:
        conn.execute("SET lock_timeout = '30s'")
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


@contextmanager
def opened(url: str, recorder: str, schema: str = "") -> Iterator[MessageStore]:
    """A MessageStore, closed afterwards (the sqlalchemy recorder's engine disposed too)."""
    store = MessageStore(url, recorder=recorder, schema=schema)
    try:
        yield store
    finally:
        store.close()
        engine = getattr(getattr(store.app.recorder, "datastore", None), "engine", None)
        dispose = getattr(engine, "dispose", None)
        if callable(dispose):
            dispose()


# --- the workload -------------------------------------------------------------------------------


def message_ids(run: str, count: int) -> list[str]:
    return [f"bench-{run}-{i:07d}" for i in range(count)]


def receive_change(message_id: str) -> Change:
    def load() -> Message:
        return Message.receive(
            message_id=message_id,
            channel="sms",
            to="+15550100000",
            body="Your code is 123456",
            correlation_id=f"corr-{message_id}",
            now=now(),
            metadata={"tenant": "bench"},
            provider="fake",
        )

    return Change(load=load)


def attempt(message: Message) -> None:
    message.start_attempt("fake", now=now())


def deliver(message: Message) -> None:
    message.record_delivery(f"prov-{message.message_id}", now=now(), latency_ms=12.5)


def follow_up(store: MessageStore, message: Message, apply: Callable[[Message], None]) -> Change:
    aggregate_id = message.id
    return Change(load=lambda: store.get(aggregate_id), apply=apply, cached=message)


def commit_all(store: MessageStore, changes: list[Change]) -> list[Message]:
    """Commit the changes; every one must be saved (the bench writes disjoint aggregates)."""
    outcomes = store.commit(changes)
    saved = [o.message for o in outcomes if o.message is not None]
    if len(saved) != len(changes):
        bad = next(o for o in outcomes if o.message is None)
        raise RuntimeError(f"a change was not saved: conflict={bad.conflict} refused={bad.refused}")
    return saved


def write_per_event(store: MessageStore, ids: list[str]) -> list[UUID]:
    aggregate_ids: list[UUID] = []
    for message_id in ids:
        [message] = commit_all(store, [receive_change(message_id)])
        [message] = commit_all(store, [follow_up(store, message, attempt)])
        [message] = commit_all(store, [follow_up(store, message, deliver)])
        aggregate_ids.append(message.id)
    return aggregate_ids


def write_batched(store: MessageStore, ids: list[str], batch: int) -> list[UUID]:
    aggregate_ids: list[UUID] = []
    for start in range(0, len(ids), batch):
        chunk = ids[start : start + batch]
        messages = commit_all(store, [receive_change(m) for m in chunk])
        messages = commit_all(store, [follow_up(store, m, attempt) for m in messages])
        messages = commit_all(store, [follow_up(store, m, deliver) for m in messages])
        aggregate_ids.extend(m.id for m in messages)
    return aggregate_ids


def read_all(store: MessageStore, aggregate_ids: list[UUID]) -> None:
    for aggregate_id in aggregate_ids:
        message = store.get(aggregate_id)
        if message.version != EVENTS_PER_MESSAGE or message.status != DELIVERED:
            raise RuntimeError(f"bad history for {aggregate_id}: v{message.version} {message.status}")


def run_workload(store: MessageStore, row: Row, ids: list[str], batch: int) -> None:
    store.ping()
    started = time.perf_counter()
    per_event = row.mode == PER_EVENT
    aggregate_ids = write_per_event(store, ids) if per_event else write_batched(store, ids, batch)
    row.write_seconds = time.perf_counter() - started
    started = time.perf_counter()
    read_all(store, aggregate_ids)
    row.read_seconds = time.perf_counter() - started
    row.messages = len(ids)


# --- one row per combination --------------------------------------------------------------------


def run_sqlite(row: Row, ids: list[str], batch: int, workdir: Path) -> None:
    url = f"sqlite:///{workdir / f'{row.recorder}-{row.mode}.db'}"
    with opened(url, row.recorder) as store:
        run_workload(store, row, ids, batch)


def run_postgres(row: Row, ids: list[str], batch: int, run: str) -> None:
    schema = f"smeg_bench_{run}_{row.recorder}_{row.mode.replace('-', '_')}"
    create_schema(POSTGRES_URL, schema)
    try:
        try:
            with opened(POSTGRES_URL, row.recorder, schema) as store:
                run_workload(store, row, ids, batch)
            return
        except Exception as exc:
            if row.recorder != SQLALCHEMY:
                raise
            first_error = one_line(exc)
        # eventsourcing_sqlalchemy refused the schema: put it in the schema via search_path.
        print(
            f"  {row.recorder}/{row.mode}: SQLALCHEMY_SCHEMA failed ({first_error});"
            " retrying with search_path"
        )
        drop_schema(POSTGRES_URL, schema)
        create_schema(POSTGRES_URL, schema)
        row.note = "search_path"
        with opened(with_search_path(POSTGRES_URL, schema), row.recorder) as store:
            run_workload(store, row, ids, batch)
    finally:
        drop_schema(POSTGRES_URL, schema)


def run_row(row: Row, ids: list[str], batch: int, run: str, workdir: Path) -> None:
    label = f"{row.backend}/{row.recorder}/{row.mode}"
    print(f"  {label}: {len(ids)} messages …", flush=True)
    try:
        if row.backend == SQLITE:
            run_sqlite(row, ids, batch, workdir)
        else:
            run_postgres(row, ids, batch, run)
    except Exception as exc:
        row.skipped = one_line(exc)
        print(f"  {label}: SKIPPED: {row.skipped}", flush=True)
        return
    print(
        f"  {label}: write {row.write_seconds:.1f} s, read {row.read_seconds:.1f} s",
        flush=True,
    )


# --- output -------------------------------------------------------------------------------------


def print_table(rows: list[Row]) -> None:
    header = ("backend", "recorder", "mode", "messages", "write events/s", "read histories/s")
    lines = [header]
    for row in rows:
        recorder = f"{row.recorder} ({row.note})" if row.note else row.recorder
        if row.skipped:
            lines.append((row.backend, recorder, row.mode, "-", "skipped", "skipped"))
            continue
        rates = (f"{row.write_rate:,.0f}", f"{row.read_rate:,.0f}")
        lines.append((row.backend, recorder, row.mode, str(row.messages), *rates))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for i, line in enumerate(lines):
        cells = [
            cell.rjust(w) if j >= 3 else cell.ljust(w)
            for j, (cell, w) in enumerate(zip(line, widths, strict=True))
        ]
        print("  ".join(cells).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))
    for row in rows:
        if row.skipped:
            print(f"skipped {row.backend}/{row.recorder}/{row.mode}: {row.skipped}")


def print_ratios(rows: list[Row]) -> None:
    print()
    print("core / sqlalchemy (same run; >1 means core is faster)")
    found = False
    for backend in BACKENDS:
        for mode in MODES:
            pair = {r.recorder: r for r in rows if r.backend == backend and r.mode == mode and not r.skipped}
            if CORE not in pair or SQLALCHEMY not in pair:
                continue
            core, alchemy = pair[CORE], pair[SQLALCHEMY]
            print(
                f"  {backend:<8}  {mode:<9}  write {core.write_rate / alchemy.write_rate:5.2f}x"
                f"   read {core.read_rate / alchemy.read_rate:5.2f}x"
            )
            found = True
    if not found:
        print("  (no backend/mode has both recorders)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--messages", type=int, default=10_000, help="messages per row (default 10000)")
    parser.add_argument("--batch", type=int, default=100, help="aggregates per commit() in batched mode")
    parser.add_argument(
        "--backends", type=lambda v: choices(v, BACKENDS), default=list(BACKENDS), help="sqlite,postgres"
    )
    parser.add_argument(
        "--recorders", type=lambda v: choices(v, RECORDERS), default=list(RECORDERS), help="core,sqlalchemy"
    )
    parser.add_argument(
        "--modes", type=lambda v: choices(v, MODES), default=list(MODES), help="per-event,batched"
    )
    args = parser.parse_args(argv)
    if args.messages < 1 or args.batch < 1:
        parser.error("--messages and --batch must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run = uuid.uuid4().hex[:8]
    print(
        f"smeg store bench: {args.messages} messages x {EVENTS_PER_MESSAGE} events, batch {args.batch}; "
        f"eventsourcing {version('eventsourcing')}, eventsourcing-sqlalchemy "
        f"{version('eventsourcing-sqlalchemy')}, SQLAlchemy {version('sqlalchemy')}"
    )
    if POSTGRES in args.backends:
        print(
            f"postgres: {make_url(POSTGRES_URL).render_as_string(hide_password=True)} (fresh schema per row)"
        )
    rows: list[Row] = []
    total = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="smeg-bench-") as tmp:
        workdir = Path(tmp)
        for backend in args.backends:
            for recorder in args.recorders:
                for mode in args.modes:
                    row = Row(backend, recorder, mode)
                    rows.append(row)
                    run_row(row, message_ids(run, args.messages), args.batch, run, workdir)
                    for leftover in workdir.glob("*.db*"):
                        with suppress(OSError):
                            leftover.unlink()
    print(f"\ntotal {time.perf_counter() - total:.0f} s\n")
    print_table(rows)
    print_ratios(rows)
    return 1 if all(r.skipped for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
