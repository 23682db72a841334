"""Events written before a field existed still read back: ``Attempted`` without ``trial``."""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime, timezone
from pathlib import Path

from adapters.event_store import Change, MessageStore
from domain.message import Message

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)


def test_an_attempted_of_before_trials_reads_as_an_ordinary_attempt(tmp_path: Path) -> None:
    # Given an Attempted event as stored before 2026-12-07 (no "trial" in its state)
    path = tmp_path / "smeg.db"
    store = MessageStore(f"sqlite:///{path}")
    message = Message.receive(
        message_id="m", channel="sms", to="+447700900123", body="b", correlation_id="c", now=T0
    )
    message.start_attempt("a", now=T0)
    assert store.commit([Change(load=lambda: message, cached=message)])[0].saved
    store.close()
    with sqlite3.connect(path) as connection:
        (state,) = connection.execute(
            "SELECT state FROM stored_events WHERE originator_version = 2"
        ).fetchone()
        old = json.loads(state)
        assert old.pop("trial") is False
        connection.execute(
            "UPDATE stored_events SET state = ? WHERE originator_version = 2", (json.dumps(old).encode(),)
        )

    # When it is read back, through the library and through the fast log reader
    store = MessageStore(f"sqlite:///{path}")
    try:
        loaded = store.get(Message.create_id("m"))
        [_, (_, attempted)] = store.read_events(0, 10)[0]
    finally:
        store.close()

    # Then it is an ordinary attempt, counted toward the cycle
    assert (loaded.trial, loaded.cycle_attempts, loaded.attempts) == (False, 1, 1)
    assert isinstance(attempted, Message.Attempted) and attempted.trial is False
