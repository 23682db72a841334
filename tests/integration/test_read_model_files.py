"""An install whose read models lived in the SQLite store's file keeps them when they move out."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from sqlalchemy import Engine, select, text

from adapters.event_store import MessageStore
from adapters.events_exchange import TRACKING_NAME
from adapters.projections import advance_tracking, tracking
from adapters.read_model_files import move_read_models
from adapters.sql import make_engine, read_models_beside
from adapters.status_view import message_status
from smeg_actors.runtime.read_models import runners
from tests.integration.test_projections import seed


def rows(engine: Engine, table: str) -> list[tuple[object, ...]]:
    with engine.connect() as connection:
        return [tuple(row) for row in connection.execute(text(f'SELECT * FROM "{table}" ORDER BY 1, 2'))]


def tables(path: Path) -> set[str]:
    connection = sqlite3.connect(path)
    try:
        return {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    finally:
        connection.close()


def test_read_models_kept_in_the_store_file_move_once_with_their_positions(tmp_path: Path) -> None:
    # Given the old layout: read models, their positions and the events exchange's in the store's file
    store_url = f"sqlite:///{tmp_path}/smeg.db"
    store = MessageStore(store_url)
    seed(store, 300)
    old = make_engine(store_url)
    for runner in runners(store, old):
        runner.catch_up()
    head = store.max_position()
    with old.begin() as connection:
        assert advance_tracking(connection, TRACKING_NAME, 0, head)
        connection.execute(text("CREATE TABLE stats_message_info (id TEXT PRIMARY KEY)"))
    names = ("message_status", "delivery_stats_hourly", "delivery_stats_minutely", "smeg_tracking")
    before = {name: rows(old, name) for name in names}
    old.dispose()

    # When
    read_url = read_models_beside(store_url)
    copied = move_read_models(store_url, read_url)
    again = move_read_models(store_url, read_url)

    # Then: every row moved once, positions included (nothing replayed, nothing republished)
    new = make_engine(read_url)
    assert copied["message_status"] == 300 and copied["smeg_tracking"] == 5
    assert again == {}
    assert {name: rows(new, name) for name in before} == before
    with new.connect() as connection:
        positions = dict(connection.execute(select(tracking.c.projection, tracking.c.position)).all())
        assert positions[TRACKING_NAME] == head
        assert connection.scalar(select(message_status.c.id).limit(1)) is not None
    for runner in runners(store, new):
        assert runner.catch_up() == 0
    # and the store's file keeps its events but no stale copies of the read models
    moved = {"message_status", "delivery_stats_hourly", "delivery_stats_minutely", "failures_by_reason"}
    moved.add("smeg_tracking")
    assert tables(tmp_path / "smeg.db").isdisjoint({*moved, "stats_message_info"})
    assert store.max_position() == head
    new.dispose()
    store.close()


def test_nothing_moves_for_a_new_install_or_postgresql(tmp_path: Path) -> None:
    store_url = f"sqlite:///{tmp_path}/fresh.db"
    store = MessageStore(store_url)
    seed(store, 10)
    assert move_read_models(store_url, read_models_beside(store_url)) == {}
    assert move_read_models(store_url, store_url) == {}
    assert move_read_models("postgresql+psycopg://u@h/db", "postgresql+psycopg://u@h/db") == {}
    store.close()
