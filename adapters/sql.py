"""SQLAlchemy engines for our own tables (read models, tracking), beside the event store.

One place decides timeouts and schema for every SQL connection smeg opens through SQLAlchemy.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    Connection,
    Date,
    DateTime,
    Engine,
    Insert,
    Integer,
    MetaData,
    String,
    Table,
    Update,
    create_engine,
    event,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.sqlite import DATETIME as SQLITE_DATETIME
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.types import TypeEngine

metadata = MetaData()


def make_engine(url: str, *, schema: str = "", statement_timeout_s: float = 30.0) -> Engine:
    """An engine with connect and statement timeouts (a silent network must not hang a write)."""
    parsed = make_url(url)
    connect_args: dict[str, Any] = {}
    options: dict[str, Any] = {}
    if parsed.get_backend_name() == "sqlite":
        connect_args = {"timeout": 10, "check_same_thread": False}
        if not parsed.database or parsed.database == ":memory:":
            raise ValueError("read models need a file database (sqlite:///path.db)")
    else:
        connect_args = {
            "connect_timeout": 5,
            # A transaction left idle (a hung broker mid-publication, a frozen process) gives
            # its locks back instead of holding them until TCP notices.
            "options": f"-c statement_timeout={int(statement_timeout_s * 1000)}"
            f" -c idle_in_transaction_session_timeout={int(max(60.0, 10 * statement_timeout_s) * 1000)}",
            "keepalives": 1,
            "keepalives_idle": 10,
            "keepalives_interval": 5,
            "keepalives_count": 3,
            "tcp_user_timeout": int(statement_timeout_s * 1000),
        }
        if schema:
            options["schema_translate_map"] = {None: schema}
    engine = create_engine(parsed, connect_args=connect_args, pool_pre_ping=True, execution_options=options)
    if parsed.get_backend_name() == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def read_models_beside(url: str) -> str:
    """Where read models go by default, given the event store's URL.

    PostgreSQL: the same database. SQLite: a file of their own beside the store's
    (``smeg.db`` → ``smeg.read.db``). SQLite has one write lock per file; the projector and the
    pipeline writing to one file queued behind each other, and SQLite's busy handler sleeps in
    steps of milliseconds while it waits. Read models need no transaction with the events: their
    tracking position lives with them.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return url
    path = Path(parsed.database)
    beside = path.with_name(f"{path.stem}.read{path.suffix}" if path.suffix else f"{path.name}.read")
    return parsed.set(database=str(beside)).render_as_string(hide_password=False)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


_COMPILED: dict[tuple[Any, ...], tuple[str, list[str], list[Any], bool]] = {}


def execute_many(
    connection: Connection,
    key: Hashable,
    build: Callable[[], Insert | Update],
    rows: Sequence[Mapping[str, Any]],
) -> None:
    """``connection.execute(build(), rows)`` for many rows, at a fraction of the CPU.

    SQLAlchemy builds and type-processes a parameter dict per row inside ``execute``; here the
    statement is compiled once per ``key`` and dialect, each column's bind processor is looked up
    once, and the rows go to the driver's ``executemany`` as tuples (or dicts for named
    paramstyles). The stored values are the ones SQLAlchemy itself would write.
    """
    if not rows:
        return
    dialect = connection.dialect
    translate = connection.get_execution_options().get("schema_translate_map")
    cache_key = (key, dialect.name, tuple(sorted((translate or {}).items(), key=str)))
    entry = _COMPILED.get(cache_key)
    if entry is None:
        statement = build()
        compiled = statement.compile(
            dialect=dialect, schema_translate_map=translate, render_schema_translate=bool(translate)
        )
        names = list(compiled.positiontup or compiled.binds)
        processors = [_bind_processor(compiled.binds[name].type, dialect) for name in names]
        entry = _COMPILED[cache_key] = (str(compiled), names, processors, compiled.positiontup is not None)
    sql, names, processors, positional = entry
    pairs = list(zip(names, processors, strict=True))
    params: list[Any] = []
    for row in rows:
        values = [
            row[name] if process is None or row[name] is None else process(row[name])
            for name, process in pairs
        ]
        params.append(tuple(values) if positional else dict(zip(names, values, strict=True)))
    connection.exec_driver_sql(sql, params)


#: From this many rows, ``add_counts`` on PostgreSQL stages them by binary COPY (fewer: executemany).
COPY_FROM_ROWS = 50
#: Binary COPY's type of a counters table's column, by its SQLAlchemy type (first match; else text).
_PG_TYPES: tuple[tuple[type[TypeEngine[Any]], str], ...] = (
    (DateTime, "timestamptz"),
    (Date, "date"),
    (BigInteger, "int8"),
    (Integer, "int4"),
)


def add_counts(
    connection: Connection,
    table: Table,
    key: Sequence[str],
    columns: Sequence[str],
    sums: Mapping[Any, Sequence[int]],
) -> None:
    """One upsert adding ``sums`` (key tuple → one count per column of ``columns``, in order) to
    the stored counters of ``table`` (a row missing is inserted with them). On PostgreSQL, many
    rows are staged in a temporary table by binary COPY first (per-row statements through
    ``executemany`` cost about 40 µs a row on the server)."""
    if not sums:
        return
    if connection.dialect.name == "postgresql" and len(sums) >= COPY_FROM_ROWS:
        _add_counts_copied(connection, table, key, columns, sums)
        return

    def upsert() -> Any:
        module: Any = postgresql if connection.dialect.name == "postgresql" else sqlite
        statement = module.insert(table)
        return statement.on_conflict_do_update(
            index_elements=[table.c[k] for k in key],
            set_={c: table.c[c] + statement.excluded[c] for c in columns},
        )

    rows = [dict(zip(key, k, strict=True)) | dict(zip(columns, sums[k], strict=True)) for k in sorted(sums)]
    execute_many(connection, (table, "add", tuple(columns)), upsert, rows)


def _add_counts_copied(
    connection: Connection,
    table: Table,
    key: Sequence[str],
    columns: Sequence[str],
    sums: Mapping[Any, Sequence[int]],
) -> None:
    name, stage = qualified_name(connection, table), f"pg_temp.smeg_add_{table.name}"
    connection.exec_driver_sql(f"CREATE TEMP TABLE IF NOT EXISTS {stage} (LIKE {name}) ON COMMIT DELETE ROWS")
    connection.exec_driver_sql(f"DELETE FROM {stage}")  # a savepoint's earlier batch, if any
    names = [*key, *columns]
    types = [next((t for kind, t in _PG_TYPES if isinstance(table.c[n].type, kind)), "text") for n in names]
    copy_rows(connection, stage, names, types, ([*k, *sums[k]] for k in sorted(sums)))
    listed = ", ".join(names)
    sets = ", ".join(f"{c} = t.{c} + excluded.{c}" for c in columns)
    # Rows locked in Python's key order, as executemany's (text by code point: COLLATE "C").
    order = ", ".join(f'{k} COLLATE "C"' if isinstance(table.c[k].type, String) else k for k in key)
    connection.exec_driver_sql(
        f"INSERT INTO {name} AS t ({listed}) SELECT {listed} FROM {stage} ORDER BY {order} "
        f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET {sets}"
    )


def translated_schema(connection: Connection, table: Table) -> str | None:
    """The schema this connection's statements put ``table`` in (schema translation included)."""
    translate = connection.get_execution_options().get("schema_translate_map") or {}
    schema: str | None = translate.get(table.schema, table.schema)
    return schema


def qualified_name(connection: Connection, table: Table) -> str:
    """The table's name as this connection's statements see it (schema translation included)."""
    schema = translated_schema(connection, table)
    preparer = connection.dialect.identifier_preparer
    return (
        f"{preparer.quote_schema(schema)}.{preparer.quote(table.name)}"
        if schema
        else preparer.quote(table.name)
    )


def copy_rows(
    connection: Connection,
    target: str,
    columns: Sequence[str],
    types: Sequence[str],
    rows: Iterable[Sequence[Any]],
) -> None:
    """PostgreSQL only: ``rows`` into ``target`` by binary COPY, inside the connection's transaction.

    psycopg sends the rows of ``executemany`` one statement each (in pipeline mode), and builds
    every one's parameters in Python; a binary COPY does that in C and the server parses one
    stream: about a tenth of the CPU on each side for a batch of hundreds of rows.
    """
    cursor = connection.connection.driver_connection.cursor()  # type: ignore[union-attr]
    with cursor, cursor.copy(f"COPY {target} ({', '.join(columns)}) FROM STDIN (FORMAT BINARY)") as copy:
        copy.set_types(list(types))
        for row in rows:
            copy.write_row(row)


def _sqlite_datetime(value: datetime) -> str:
    return value.isoformat(" ", "microseconds")[:26]


def _bind_processor(type_: TypeEngine[Any], dialect: Dialect) -> Callable[[Any], Any] | None:
    """The column type's bind processor; for SQLite's default DATETIME format, a C-speed equal.

    SQLAlchemy's formats ``%04d-%02d-%02d %02d:%02d:%02d.%06d`` from the fields (tzinfo ignored);
    ``isoformat(" ", "microseconds")`` cut before the offset is the same text (tested).
    """
    impl = type_.dialect_impl(dialect)
    if isinstance(impl, SQLITE_DATETIME) and impl._storage_format == SQLITE_DATETIME._storage_format:
        return _sqlite_datetime
    return impl.bind_processor(dialect)


def as_utc(value: datetime) -> datetime:
    """A datetime read back from a table, in UTC (SQLite hands back naive ones, stored as UTC)."""
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
