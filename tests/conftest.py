"""Shared fixtures: freezegun-safe event transcoding and an isolated PostgreSQL schema per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import datetime

import psycopg
import pytest
from eventsourcing.persistence import Transcoding
from freezegun.api import FakeDatetime
from psycopg import sql
from sqlalchemy.engine import make_url

from adapters.event_store import EXTRA_TRANSCODINGS

#: The real PostgreSQL of the integration tier (trust auth); override with SMEG_TEST_POSTGRES_URL.
POSTGRES_URL = os.environ.get("SMEG_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


# --- freezegun (library-notes G2) -----------------------------------------------------------


class FakeDatetimeAsISO(Transcoding):
    """Encodes freezegun's FakeDatetime exactly like a real datetime (same name, same ISO text).

    Stored data is therefore identical to production data, and decoding yields real datetimes.
    """

    type = FakeDatetime
    name = "datetime_iso"

    def encode(self, obj: datetime) -> str:
        return obj.isoformat()

    def decode(self, data: str) -> datetime:
        return datetime.fromisoformat(data)


def register_fake_datetime_transcoding() -> Transcoding:
    """Let stores built from now on save events stamped under ``freeze_time`` (idempotent)."""
    for transcoding in EXTRA_TRANSCODINGS:
        if isinstance(transcoding, FakeDatetimeAsISO):
            return transcoding
    transcoding = FakeDatetimeAsISO()
    EXTRA_TRANSCODINGS.append(transcoding)
    return transcoding


def unregister_fake_datetime_transcoding() -> None:
    EXTRA_TRANSCODINGS[:] = [t for t in EXTRA_TRANSCODINGS if not isinstance(t, FakeDatetimeAsISO)]


@pytest.fixture
def fake_datetime_transcoding() -> Iterator[None]:
    """Stores created inside the test can save FakeDatetime timestamps; removed afterwards."""
    already = any(isinstance(t, FakeDatetimeAsISO) for t in EXTRA_TRANSCODINGS)
    register_fake_datetime_transcoding()
    yield
    if not already:
        unregister_fake_datetime_transcoding()


# --- PostgreSQL -----------------------------------------------------------------------------


def psycopg_conninfo(url: str) -> str:
    """The libpq form of a SQLAlchemy URL (``postgresql+psycopg://`` → ``postgresql://``)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _unreachable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The PostgreSQL URL; skips the test when unreachable locally, fails it when CI=true."""
    try:
        with psycopg.connect(psycopg_conninfo(POSTGRES_URL), connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        _unreachable(f"PostgreSQL unreachable at {POSTGRES_URL}: {exc}".splitlines()[0])
    return POSTGRES_URL


@pytest.fixture
def pg_schema(postgres_url: str) -> Iterator[tuple[str, str]]:
    """``(url, schema)``: a fresh schema of this test's own, dropped (CASCADE) afterwards."""
    schema = f"smeg_t_{uuid.uuid4().hex[:12]}"
    conninfo = psycopg_conninfo(postgres_url)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    yield postgres_url, schema
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
