"""``execute_many`` writes what SQLAlchemy's own ``execute`` writes, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
from sqlalchemy import (
    Boolean,
    Column,
    Date,
    DateTime,
    Engine,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    Uuid,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite

from adapters.sql import execute_many, make_engine

metadata = MetaData()
sample = Table(
    "bulk_sample",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("name", String(32), nullable=False),
    Column("count", Integer, nullable=False),
    Column("flag", Boolean, nullable=False),
    Column("at", DateTime(timezone=True)),
    Column("day", Date),
    Column("price", Numeric(10, 2)),
)


@pytest.fixture(params=["sqlite", "postgres"])
def engine(request: Any, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        url, schema = f"sqlite:///{tmp_path}/bulk.db", ""
    else:
        url, schema = request.getfixturevalue("pg_schema")
    engine = make_engine(url, schema=schema)
    metadata.create_all(engine)
    yield engine
    engine.dispose()


def upsert(engine: Engine) -> Any:
    module: Any = postgresql if engine.dialect.name == "postgresql" else sqlite
    statement = module.insert(sample)
    return statement.on_conflict_do_update(
        index_elements=[sample.c.id],
        set_={"count": sample.c["count"] + statement.excluded["count"], "name": statement.excluded["name"]},
    )


def rows_of(count: int) -> list[dict[str, Any]]:
    start = datetime(2026, 3, 1, 8, tzinfo=timezone.utc)
    return [
        {
            "id": uuid4(),
            "name": f"row-{i}",
            "count": i,
            "flag": i % 2 == 0,
            "at": None if i % 5 == 0 else start + timedelta(seconds=i, microseconds=i),
            "day": date(2026, 3, 1 + i % 28),
            "price": None,
        }
        for i in range(count)
    ]


def table(engine: Engine) -> list[tuple[Any, ...]]:
    with engine.connect() as connection:
        return sorted(tuple(r) for r in connection.execute(select(sample)))


def test_bulk_upserts_store_what_sqlalchemy_stores(engine: Engine) -> None:
    # Given rows written by SQLAlchemy, then cleared
    rows = rows_of(25)
    with engine.begin() as connection:
        connection.execute(upsert(engine), rows)
    by_sqlalchemy = table(engine)
    with engine.begin() as connection:
        connection.execute(sample.delete())
    # When the same rows go through execute_many, then some again (the upsert adds)
    with engine.begin() as connection:
        execute_many(connection, (sample, "test"), lambda: upsert(engine), rows)
    # Then the table holds exactly what SQLAlchemy wrote
    assert table(engine) == by_sqlalchemy and len(by_sqlalchemy) == 25
    with engine.begin() as connection:
        execute_many(connection, (sample, "test"), lambda: upsert(engine), rows[:3])
    counts = {r[1]: r[2] for r in table(engine)}
    assert [counts[f"row-{i}"] for i in range(4)] == [0, 2, 4, 3]
