"""``smeg schedule`` as a subprocess: what is due when (text and --json), held messages and the
oldest one, the provider filter, and a bad --within refused with exit 2 in one line."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from adapters.event_store import Change, MessageStore
from adapters.sql import make_engine, read_models_beside
from domain.backoff import BackoffPolicy
from domain.message import Message
from smeg_actors.runtime.read_models import ReadModelSet, runners
from tests.e2e.conftest import run_cli, smeg_env

EMPTY: dict[str, Any] = {"due": [], "held": {}, "oldest_held": None}


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def minute(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:00Z")


def configured(tmp_path: Path) -> tuple[dict[str, str], str]:
    url = f"sqlite:///{tmp_path}/smeg.db"
    return smeg_env(SMEG_DATABASE_URL=url, SMEG_PROVIDER_URL="http://127.0.0.1:9/send"), url


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[dict[str, str], str, str]:
    """``(env, url, schema)``: a SQLite file, or a PostgreSQL schema of the test's own."""
    if request.param == "sqlite":
        return (*configured(tmp_path), "")
    url, schema = request.getfixturevalue("pg_schema")
    env = smeg_env(
        SMEG_DATABASE_URL=url, SMEG_DATABASE_SCHEMA=schema, SMEG_PROVIDER_URL="http://127.0.0.1:9/send"
    )
    return env, url, schema


def received(message_id: str, now: datetime) -> Message:
    return Message.receive(
        message_id=message_id, channel="sms", to="+447700900123", body="hi", correlation_id="c", now=now
    )


def backed_off(message_id: str, now: datetime, delay: float) -> Message:
    """Attempted through ``default`` a minute ago and backed off: due ``delay`` s after that."""
    message = received(message_id, now - timedelta(seconds=60))
    message.start_attempt("default", now=now - timedelta(seconds=60))
    policy = BackoffPolicy(initial=delay, max_delay=delay)
    message.record_transient_failure("http 503", error="busy", policy=policy, now=now - timedelta(seconds=60))
    return message


def held(message_id: str, provider: str, *, received_at: datetime, until: datetime) -> Message:
    message = received(message_id, received_at)
    message.hold(provider, until=until, reason="provider disabled", now=received_at)
    return message


def seed(url: str, now: datetime, schema: str = "") -> None:
    """New, backed off (due in 4 min, in 59 min), held (due in 2 min; overdue), in flight, delivered."""
    flying, delivered = received("flying", now), received("delivered", now)
    flying.start_attempt("default", now=now)
    delivered.start_attempt("default", now=now)
    delivered.record_delivery("pm-1", now=now)
    messages = [
        received("new", now),
        backed_off("soon", now, 300),
        backed_off("far", now, 3600),
        held("held", "default", received_at=now - timedelta(seconds=30), until=now + timedelta(seconds=120)),
        held("held-old", "sms-eu", received_at=now - timedelta(hours=1), until=now - timedelta(seconds=10)),
        flying,
        delivered,
    ]
    store = MessageStore(url, schema=schema)
    engine = make_engine(url, schema=schema) if schema else make_engine(read_models_beside(url))
    try:
        assert all(o.saved for o in store.commit([Change(load=_as_is(m), cached=m) for m in messages]))
        ReadModelSet(store, runners(store, engine)).catch_up()
    finally:
        engine.dispose()
        store.close()


def _as_is(message: Message) -> Callable[[], Message]:
    return lambda: message


def schedule_json(env: dict[str, str], *args: str) -> Any:
    result = run_cli(env, "schedule", "--json", *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def current_minutes(now: datetime) -> set[str]:
    """The minute the command counts as now: the seed's, or the next if the clock turned since."""
    return {minute(now), minute(now + timedelta(seconds=30))}


def current_minute(found: Any, now: datetime) -> str:
    first = str(found["due"][0]["minute"])
    assert first in current_minutes(now)
    return first


def test_an_empty_store_has_nothing_due_and_nothing_held(tmp_path: Path) -> None:
    env, url = configured(tmp_path)
    MessageStore(url).close()
    text = run_cli(env, "schedule")
    assert text.returncode == 0, text.stderr
    assert text.stdout.splitlines() == ["nothing due within 10m", "nothing held"]
    assert schedule_json(env) == EMPTY


def test_due_counts_per_minute_and_provider_held_counts_and_the_oldest_held(
    database: tuple[dict[str, str], str, str],
) -> None:
    env, url, schema = database
    now = datetime.now(timezone.utc)
    seed(url, now, schema)
    found = schedule_json(env)
    first = current_minute(found, now)
    assert found == {
        "due": [
            {"minute": first, "provider": None, "count": 1},
            {"minute": first, "provider": "sms-eu", "count": 1},
            {"minute": minute(now + timedelta(seconds=120)), "provider": "default", "count": 1},
            {"minute": minute(now + timedelta(seconds=240)), "provider": "default", "count": 1},
        ],
        "held": {"default": 1, "sms-eu": 1},
        "oldest_held": {"message_id": "held-old", "since": iso(now - timedelta(hours=1))},
    }
    wider = schedule_json(env, "--within", "2h")["due"]
    assert wider[-1] == {"minute": minute(now + timedelta(seconds=3540)), "provider": "default", "count": 1}
    soonest = [item["minute"] for item in schedule_json(env, "--within", "30s")["due"]]
    assert len(soonest) == 2 and soonest[0] == soonest[1] and soonest[0] in current_minutes(now)


def test_the_table_for_people(tmp_path: Path) -> None:
    env, url = configured(tmp_path)
    now = datetime.now(timezone.utc)
    seed(url, now)
    result = run_cli(env, "schedule")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:2] == ["due within 10m:", "minute (UTC)          provider  count"]
    assert [line.split()[1:] for line in lines[2:6]] == [
        ["-", "1"],
        ["sms-eu", "1"],
        ["default", "1"],
        ["default", "1"],
    ]
    assert lines[6:] == [
        "held: default 1, sms-eu 1",
        f"oldest held: held-old, received {iso(now - timedelta(hours=1))}",
    ]


def test_the_provider_filter(tmp_path: Path) -> None:
    env, url = configured(tmp_path)
    now = datetime.now(timezone.utc)
    seed(url, now)
    found = schedule_json(env, "--provider", "sms-eu")
    assert found == {
        "due": [{"minute": current_minute(found, now), "provider": "sms-eu", "count": 1}],
        "held": {"sms-eu": 1},
        "oldest_held": {"message_id": "held-old", "since": iso(now - timedelta(hours=1))},
    }
    only_default = schedule_json(env, "--provider", "default")
    assert [item["provider"] for item in only_default["due"]] == ["default", "default"]
    assert only_default["oldest_held"]["message_id"] == "held"
    assert schedule_json(env, "--provider", "nope") == EMPTY
    assert run_cli(env, "schedule", "--provider", "nope").stdout.splitlines() == [
        "nothing due within 10m",
        "nothing held",
    ]


@pytest.mark.parametrize("value", ["10x", "10", "1.5h", "0m", "-5m", "25h", "", "ten minutes"])
def test_a_bad_within_is_refused_in_one_line_with_exit_2(tmp_path: Path, value: str) -> None:
    env, url = configured(tmp_path)
    MessageStore(url).close()
    result = run_cli(env, "schedule", f"--within={value}")
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("smeg: Invalid value for '--within': ")
    assert result.stdout == ""


def test_a_missing_store_is_exit_3_and_nothing_is_created(tmp_path: Path) -> None:
    result = run_cli(smeg_env(SMEG_DATABASE_URL=f"sqlite:///{tmp_path}/typo.db"), "schedule")
    assert result.returncode == 3 and "no event store" in result.stderr
    assert list(tmp_path.iterdir()) == []
