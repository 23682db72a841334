"""The ``smeg`` operator commands as subprocesses: history, retry, audit export, redrive, check.

The store is seeded in-process with MessageStore (events stamped at known times), then closed
before the CLI runs, so the CLI reads exactly what a production process would have written.
"""

from __future__ import annotations

import getpass
import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pika
import pytest

from adapters.event_store import Change, MessageStore
from domain.backoff import BackoffPolicy
from domain.message import Message
from tests.e2e.conftest import AMQP_URL, ROOT, StubProvider, run_cli, smeg_env
from tests.waiting import wait_until

T0 = datetime(2026, 1, 1, 10, 0, tzinfo=timezone.utc)
TO = "+447700900123"
MASKED_TO = "*********0123"
BODY = "Your code is 4711, don't share it"
SENDER = "ACME"
EXHAUSTING = BackoffPolicy(initial=60, max_attempts=1)


# --- seeding the store ----------------------------------------------------------------------


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


@contextmanager
def opened(url: str, schema: str = "") -> Iterator[MessageStore]:
    store = MessageStore(url, schema=schema)
    try:
        yield store
    finally:
        store.close()


def receive(store: MessageStore, message_id: str, now: datetime) -> None:
    [outcome] = store.commit(
        [
            Change(
                load=lambda: Message.receive(
                    message_id=message_id,
                    channel="sms",
                    to=TO,
                    body=BODY,
                    sender=SENDER,
                    correlation_id=f"corr-{message_id}",
                    now=now,
                )
            )
        ]
    )
    assert outcome.saved, outcome


def change(store: MessageStore, message_id: str, apply: Any) -> None:
    outcome = store.update(Message.create_id(message_id), apply)
    assert outcome.saved, outcome


def seed_delivered_after_one_backoff(store: MessageStore, message_id: str) -> None:
    """Received, Attempted, BackedOff (60 s), Attempted, Delivered."""
    receive(store, message_id, at(0))
    change(store, message_id, lambda m: m.start_attempt("prov-a", now=at(1)))
    change(
        store,
        message_id,
        lambda m: m.record_transient_failure(
            "http 503", error="Service Unavailable", policy=BackoffPolicy(), now=at(2), status_code=503
        ),
    )
    change(store, message_id, lambda m: m.start_attempt("prov-a", now=at(62)))
    change(store, message_id, lambda m: m.record_delivery("pm-42", now=at(63), latency_ms=12.5))


def seed_failed(store: MessageStore, message_id: str, *, permanent: bool) -> None:
    """Received, Attempted, Failed (retries exhausted, or a permanent refusal)."""
    receive(store, message_id, at(0))
    change(store, message_id, lambda m: m.start_attempt("prov-a", now=at(1)))
    if permanent:
        change(
            store,
            message_id,
            lambda m: m.record_permanent_failure("http 400", error="Bad Request", now=at(2), status_code=400),
        )
    else:
        change(
            store,
            message_id,
            lambda m: m.record_transient_failure(
                "http 503", error="Service Unavailable", policy=EXHAUSTING, now=at(2), status_code=503
            ),
        )


def seed_failed_then_retried_and_delivered(store: MessageStore, message_id: str) -> None:
    seed_failed(store, message_id, permanent=False)
    change(store, message_id, lambda m: m.request_retry("operator", now=at(10)))
    change(store, message_id, lambda m: m.start_attempt("prov-a", now=at(11)))
    change(store, message_id, lambda m: m.record_delivery("pm-late", now=at(12)))


def types_of(store: MessageStore, message_id: str) -> list[str]:
    return [type(e).__name__ for e in store.history(Message.create_id(message_id))]


# --- running the CLI ------------------------------------------------------------------------


@pytest.fixture
def db(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/smeg.db"


@pytest.fixture
def env(db: str) -> dict[str, str]:
    return smeg_env(SMEG_DATABASE_URL=db)


def history_json(env: dict[str, str], message_id: str) -> list[dict[str, Any]]:
    result = run_cli(env, "history", message_id, "--json")
    assert result.returncode == 0, result.stderr
    records = json.loads(result.stdout)
    assert isinstance(records, list)
    return records


def assert_one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """A non-zero exit with exactly one ``smeg:`` line on stderr and no traceback anywhere."""
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("smeg: "), lines[0]
    return lines[0]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- history --------------------------------------------------------------------------------


def test_history_json_lists_every_event_oldest_first_with_versions_and_utc_timestamps(
    db: str, env: dict[str, str]
) -> None:
    # Given
    with opened(db) as store:
        seed_delivered_after_one_backoff(store, "h-1")
    # When
    records = history_json(env, "h-1")
    # Then
    assert [r["type"] for r in records] == ["Received", "Attempted", "BackedOff", "Attempted", "Delivered"]
    assert [r["version"] for r in records] == [1, 2, 3, 4, 5]
    stamps = [datetime.fromisoformat(r["timestamp"]) for r in records]
    assert all(s.tzinfo is not None and s.utcoffset() == timedelta(0) for s in stamps)
    assert stamps == [at(0), at(1), at(2), at(62), at(63)]


def test_history_json_shows_each_event_field_under_its_documented_name(db: str, env: dict[str, str]) -> None:
    # Given
    with opened(db) as store:
        seed_delivered_after_one_backoff(store, "h-2")
    # When
    received, attempted, backed_off, second, delivered = history_json(env, "h-2")
    # Then
    assert received["message_id"] == "h-2"
    assert received["to"] == TO
    assert received["from"] == SENDER
    assert "sender" not in received
    assert received["channel"] == "sms"
    assert received["correlation_id"] == "corr-h-2"
    assert attempted["attempt"] == 1 and attempted["provider"] == "prov-a"
    assert backed_off["attempt"] == 1
    assert backed_off["reason"] == "http 503"
    assert backed_off["status_code"] == 503
    assert backed_off["delay_seconds"] == 60.0
    assert datetime.fromisoformat(backed_off["retry_at"]) == at(62)
    assert backed_off["policy"] == BackoffPolicy().as_dict()
    assert second["attempt"] == 2
    assert delivered["attempt"] == 2
    assert delivered["provider"] == "prov-a"
    assert delivered["provider_message_id"] == "pm-42"
    assert delivered["latency_ms"] == 12.5


def test_history_prints_one_line_per_event_with_the_recipient_masked_and_never_the_body(
    db: str, env: dict[str, str]
) -> None:
    # Given
    with opened(db) as store:
        seed_delivered_after_one_backoff(store, "h-3")
    # When
    result = run_cli(env, "history", "h-3")
    # Then
    assert result.returncode == 0, result.stderr
    header, *events = result.stdout.splitlines()
    assert "h-3" in header and "delivered" in header
    kinds = ["Received", "Attempted", "BackedOff", "Attempted", "Delivered"]
    assert len(events) == len(kinds)
    assert all(kind in line for kind, line in zip(kinds, events, strict=True))
    assert MASKED_TO in events[0]
    assert TO not in result.stdout
    assert BODY not in result.stdout and "4711" not in result.stdout
    assert "pm-42" in events[4]


@pytest.mark.parametrize("permanent", [True, False])
def test_history_json_of_a_failed_message_says_whether_the_failure_was_permanent(
    db: str, env: dict[str, str], permanent: bool
) -> None:
    # Given
    with opened(db) as store:
        seed_failed(store, "f-1", permanent=permanent)
    # When
    records = history_json(env, "f-1")
    # Then
    failed = records[-1]
    assert failed["type"] == "Failed"
    assert failed["permanent"] is permanent
    assert failed["attempt"] == 1
    assert failed["reason"] == ("http 400" if permanent else "http 503")


def test_history_of_an_unknown_message_id_exits_1_with_exactly_one_line_and_no_traceback(
    db: str, env: dict[str, str]
) -> None:
    # Given
    with opened(db) as store:
        seed_failed(store, "known", permanent=False)
    # When
    result = run_cli(env, "history", "unknown-id")
    # Then
    assert result.returncode == 1
    assert "unknown-id" in assert_one_line_error(result)
    assert result.stdout == ""


# --- retry ----------------------------------------------------------------------------------


def test_retry_of_an_exhausted_failure_exits_0_and_records_a_retry_requested_by_the_operator(
    db: str, env: dict[str, str]
) -> None:
    # Given
    with opened(db) as store:
        seed_failed(store, "r-1", permanent=False)
    # When
    result = run_cli(env, "retry", "r-1")
    # Then
    assert result.returncode == 0, result.stderr
    assert "r-1" in result.stdout
    records = history_json(env, "r-1")
    assert [r["type"] for r in records] == ["Received", "Attempted", "Failed", "RetryRequested"]
    assert records[-1]["requested_by"].startswith("cli:")
    assert records[-1]["version"] == 4


def test_retry_of_a_permanent_failure_is_the_operators_call_and_exits_0(db: str, env: dict[str, str]) -> None:
    # Given
    with opened(db) as store:
        seed_failed(store, "r-perm", permanent=True)
    # When
    result = run_cli(env, "retry", "r-perm")
    # Then
    assert result.returncode == 0, result.stderr
    assert history_json(env, "r-perm")[-1]["type"] == "RetryRequested"


def test_retry_a_second_time_exits_1_with_one_line_and_adds_nothing(db: str, env: dict[str, str]) -> None:
    # Given a message already retried once
    with opened(db) as store:
        seed_failed(store, "r-2", permanent=False)
    assert run_cli(env, "retry", "r-2").returncode == 0
    # When
    again = run_cli(env, "retry", "r-2")
    # Then
    assert again.returncode == 1
    assert "r-2" in assert_one_line_error(again)
    assert [r["type"] for r in history_json(env, "r-2")].count("RetryRequested") == 1


def test_retry_of_a_delivered_message_exits_1_with_one_line(db: str, env: dict[str, str]) -> None:
    # Given
    with opened(db) as store:
        seed_delivered_after_one_backoff(store, "r-3")
    # When
    result = run_cli(env, "retry", "r-3")
    # Then
    assert result.returncode == 1
    assert "delivered" in assert_one_line_error(result)
    assert history_json(env, "r-3")[-1]["type"] == "Delivered"


def test_retry_of_an_unknown_message_id_exits_1_with_one_line(db: str, env: dict[str, str]) -> None:
    # Given
    with opened(db) as store:
        seed_failed(store, "known", permanent=False)
    # When
    result = run_cli(env, "retry", "unknown-id")
    # Then
    assert result.returncode == 1
    assert "unknown-id" in assert_one_line_error(result)


# --- audit export ---------------------------------------------------------------------------


TEN, ELEVEN, NOON = (datetime(2026, 1, 1, h, 0, tzinfo=timezone.utc) for h in (10, 11, 12))


def seed_three_hours(store: MessageStore) -> None:
    """In store order: alpha Received 10:00, alpha Attempted 11:00, beta Received 11:00,
    alpha Delivered 12:00."""
    receive(store, "alpha", TEN)
    change(store, "alpha", lambda m: m.start_attempt("prov-a", now=ELEVEN))
    receive(store, "beta", ELEVEN)
    change(store, "alpha", lambda m: m.record_delivery("pm-alpha", now=NOON))


def export(env: dict[str, str], *bounds: str) -> list[dict[str, Any]]:
    result = run_cli(env, "audit", "export", *bounds)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_audit_export_prints_one_json_line_per_event_in_store_order_with_the_client_message_id(
    db: str, env: dict[str, str]
) -> None:
    # Given
    with opened(db) as store:
        seed_three_hours(store)
    # When
    lines = export(env)
    # Then
    assert [(r["message_id"], r["type"]) for r in lines] == [
        ("alpha", "Received"),
        ("alpha", "Attempted"),
        ("beta", "Received"),
        ("alpha", "Delivered"),
    ]
    history = {"alpha": history_json(env, "alpha"), "beta": history_json(env, "beta")}
    for line in lines:
        expected = history[line["message_id"]][line["version"] - 1]
        assert {k: v for k, v in line.items() if k != "message_id" or line["type"] == "Received"} == expected


def test_audit_export_follows_store_order_even_when_timestamps_disagree(db: str, env: dict[str, str]) -> None:
    # Given beta is written after alpha but stamped an hour earlier
    with opened(db) as store:
        receive(store, "alpha", ELEVEN)
        receive(store, "beta", TEN)
    # When
    lines = export(env)
    # Then
    assert [r["message_id"] for r in lines] == ["alpha", "beta"]


@pytest.mark.parametrize(
    ("bounds", "expected"),
    [
        (
            ["--since", "2026-01-01T11:00:00Z"],
            [("alpha", "Attempted"), ("beta", "Received"), ("alpha", "Delivered")],
        ),
        (
            ["--until", "2026-01-01T12:00:00Z"],
            [("alpha", "Received"), ("alpha", "Attempted"), ("beta", "Received")],
        ),
        (
            ["--since", "2026-01-01T11:00:00Z", "--until", "2026-01-01T12:00:00Z"],
            [("alpha", "Attempted"), ("beta", "Received")],
        ),
        (["--until", "2026-01-01T11:00:00Z"], [("alpha", "Received")]),
        (["--since", "2026-01-01T12:00:00Z"], [("alpha", "Delivered")]),
        (["--since", "2026-01-01T12:00:01Z"], []),
        (["--since", "2026-01-01T10:00:00.000001Z", "--until", "2026-01-01T11:00:00Z"], []),
    ],
    ids=["since-inclusive", "until-exclusive", "window", "until-first", "since-last", "after-all", "empty"],
)
def test_audit_export_since_is_inclusive_and_until_is_exclusive(
    db: str, env: dict[str, str], bounds: list[str], expected: list[tuple[str, str]]
) -> None:
    # Given
    with opened(db) as store:
        seed_three_hours(store)
    # When
    lines = export(env, *bounds)
    # Then
    assert [(r["message_id"], r["type"]) for r in lines] == expected


@pytest.mark.parametrize(
    "since",
    ["2026-01-01T11:00:00", "2026-01-01T12:00:00+01:00", "2026-01-01T06:00:00-05:00"],
    ids=["naive-is-utc", "plus-one-hour", "minus-five-hours"],
)
def test_audit_export_reads_a_bound_without_a_zone_as_utc_and_honours_offsets(
    db: str, env: dict[str, str], since: str
) -> None:
    # Given
    with opened(db) as store:
        seed_three_hours(store)
    # When
    lines = export(env, "--since", since)
    # Then all three mean 11:00 UTC
    assert [(r["message_id"], r["type"]) for r in lines] == [
        ("alpha", "Attempted"),
        ("beta", "Received"),
        ("alpha", "Delivered"),
    ]


def test_audit_export_of_the_message_whose_received_lies_before_the_window_still_names_it(
    db: str, env: dict[str, str]
) -> None:
    # Given
    with opened(db) as store:
        seed_three_hours(store)
    # When
    lines = export(env, "--since", "2026-01-01T12:00:00Z")
    # Then
    assert lines[0]["message_id"] == "alpha"


@pytest.mark.parametrize("option", ["--since", "--until"])
def test_audit_export_with_a_malformed_bound_exits_non_zero_with_one_line_naming_the_option(
    db: str, env: dict[str, str], option: str
) -> None:
    # Given
    with opened(db) as store:
        seed_three_hours(store)
    # When
    result = run_cli(env, "audit", "export", option, "yesterday")
    # Then
    line = assert_one_line_error(result)
    assert option in line and "yesterday" in line
    assert result.stdout == ""


def test_audit_export_of_an_empty_store_prints_nothing_and_exits_0(db: str, env: dict[str, str]) -> None:
    with opened(db):
        pass  # an empty store: created, nothing recorded

    result = run_cli(env, "audit", "export")

    assert result.returncode == 0, result.stderr
    assert result.stdout == ""


def test_audit_export_into_a_reader_that_stops_early_exits_0_quietly(db: str, env: dict[str, str]) -> None:
    # Given more events than a pipe buffer holds
    with opened(db) as store:
        store.commit(
            [
                Change(
                    load=lambda i=i: Message.receive(
                        message_id=f"bulk-{i}", channel="sms", to=TO, body=BODY, correlation_id="c", now=TEN
                    )
                )
                for i in range(3000)
            ]
        )
    # When the reader takes one line and goes away (`smeg audit export | head -1`)
    process = subprocess.Popen(
        [sys.executable, "-m", "smeg_actors", "audit", "export"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None and process.stderr is not None
    first = json.loads(process.stdout.readline())
    process.stdout.close()
    code = process.wait(timeout=60)
    stderr = process.stderr.read()
    # Then
    assert first["message_id"] == "bulk-0"
    assert "Traceback" not in stderr
    assert code == 0, stderr


# --- bad input ------------------------------------------------------------------------------


def test_a_corrupt_toml_file_given_with_config_exits_2_with_one_line_naming_the_file(
    tmp_path: Path, env: dict[str, str]
) -> None:
    # Given
    config = tmp_path / "broken.toml"
    config.write_text("workers = = 4\n[providers.\n", encoding="utf-8")
    # When
    result = run_cli(env, "--config", str(config), "history", "x")
    # Then
    assert result.returncode == 2
    assert str(config) in assert_one_line_error(result)


def test_a_missing_config_file_exits_2_with_one_line_naming_the_file(
    tmp_path: Path, env: dict[str, str]
) -> None:
    missing = tmp_path / "nowhere.toml"

    result = run_cli(env, "--config", str(missing), "history", "x")

    assert result.returncode == 2
    assert str(missing) in assert_one_line_error(result)


def test_an_unreachable_store_makes_history_fail_with_one_line_and_no_traceback() -> None:
    env = smeg_env(SMEG_DATABASE_URL="postgresql+psycopg://postgres@127.0.0.1:1/test")

    result = run_cli(env, "history", "x")

    assert "store" in assert_one_line_error(result)


@pytest.mark.parametrize(
    ("variable", "value"),
    [("SMEG_WORKERS", "abc"), ("SMEG_DATABASE_URL", "mysql://x"), ("SMEG_LOG_FORMAT", "xml")],
)
def test_an_invalid_setting_exits_2_with_one_line_naming_the_variable(
    env: dict[str, str], variable: str, value: str
) -> None:
    result = run_cli({**env, variable: value}, "history", "x")

    assert result.returncode == 2
    assert variable in assert_one_line_error(result)


def test_an_unknown_command_exits_2_with_one_line(env: dict[str, str]) -> None:
    result = run_cli(env, "frobnicate")

    assert result.returncode == 2
    assert "frobnicate" in assert_one_line_error(result)


# --- PostgreSQL -----------------------------------------------------------------------------


def test_history_retry_and_audit_export_work_on_postgresql_in_the_configured_schema(
    pg_schema: tuple[str, str],
) -> None:
    # Given a failed message in a schema of its own
    url, schema = pg_schema
    with opened(url, schema) as store:
        seed_failed(store, "pg-1", permanent=False)
    env = smeg_env(SMEG_DATABASE_URL=url, SMEG_DATABASE_SCHEMA=schema)
    # When
    retried = run_cli(env, "retry", "pg-1")
    records = history_json(env, "pg-1")
    exported = run_cli(env, "audit", "export", "--since", "2026-01-01T10:00:01Z")
    # Then
    assert retried.returncode == 0, retried.stderr
    assert [r["type"] for r in records] == ["Received", "Attempted", "Failed", "RetryRequested"]
    assert records[2]["permanent"] is False
    assert records[3]["requested_by"].startswith("cli:")
    assert exported.returncode == 0, exported.stderr
    lines = [json.loads(line) for line in exported.stdout.splitlines()]
    assert [(r["message_id"], r["type"]) for r in lines] == [
        ("pg-1", "Attempted"),
        ("pg-1", "Failed"),
        ("pg-1", "RetryRequested"),
    ]
    with opened(url, schema) as store:
        assert types_of(store, "pg-1")[-1] == "RetryRequested"


# --- redrive --------------------------------------------------------------------------------


@contextmanager
def broker_channel() -> Iterator[Any]:
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    try:
        yield connection.channel()
    finally:
        connection.close()


def publish_failed(prefix: str, entries: list[tuple[str, bool]]) -> None:
    """Put each (message_id, permanent) on ``{prefix}.failed`` as the publisher actor would."""
    with broker_channel() as channel:
        channel.confirm_delivery()
        channel.queue_declare(f"{prefix}.failed", durable=True, arguments={"x-queue-type": "quorum"})
        for message_id, permanent in entries:
            body = {
                "message_id": message_id,
                "channel": "sms",
                "to": TO,
                "body": BODY,
                "correlation_id": f"corr-{message_id}",
            }
            headers = {
                "x-smeg-reason": "http 400" if permanent else "http 503",
                "x-smeg-attempts": "1",
                "x-smeg-permanent": "true" if permanent else "false",
                "x-smeg-provider": "prov-a",
            }
            channel.basic_publish(
                "",
                f"{prefix}.failed",
                json.dumps(body).encode(),
                pika.BasicProperties(delivery_mode=2, headers=headers, correlation_id=f"corr-{message_id}"),
            )


def failed_depth(prefix: str) -> int:
    with broker_channel() as channel:
        result = channel.queue_declare(
            f"{prefix}.failed", durable=True, arguments={"x-queue-type": "quorum"}, passive=True
        )
        return int(result.method.message_count)


def settle_depth(prefix: str, expected: int, timeout: float = 10) -> int:
    """The failed queue's depth once it reaches ``expected`` (unacked entries return asynchronously);
    AssertionError if it does not within ``timeout``."""
    wait_until(
        lambda: failed_depth(prefix) == expected,
        timeout,
        0.1,
        message=lambda: f"the failed queue holds {failed_depth(prefix)}, not {expected}",
    )
    return expected


def failed_queue_ids(prefix: str) -> list[tuple[str, str]]:
    """(message_id, x-smeg-permanent) of every entry, left on the queue (nacked back)."""
    found = []
    with broker_channel() as channel:
        while True:
            method, properties, body = channel.basic_get(f"{prefix}.failed", auto_ack=False)
            if method is None:
                break
            found.append((json.loads(body)["message_id"], properties.headers["x-smeg-permanent"]))
    return found


@pytest.fixture
def redrive_env(db: str, e2e_prefix: str) -> dict[str, str]:
    return smeg_env(SMEG_DATABASE_URL=db, SMEG_QUEUE_PREFIX=e2e_prefix)


def seed_three_failures(db: str, prefix: str) -> None:
    with opened(db) as store:
        seed_failed(store, "exhausted", permanent=False)
        seed_failed(store, "permanent", permanent=True)
        seed_failed_then_retried_and_delivered(store, "delivered")
    publish_failed(prefix, [("exhausted", False), ("permanent", True), ("delivered", False)])


def test_redrive_dry_run_changes_nothing_in_the_store_or_the_failed_queue(
    db: str, e2e_prefix: str, redrive_env: dict[str, str]
) -> None:
    # Given
    seed_three_failures(db, e2e_prefix)
    with opened(db) as store:
        before = {i: types_of(store, i) for i in ("exhausted", "permanent", "delivered")}
    # When
    result = run_cli(redrive_env, "redrive", "--dry-run")
    # Then
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "would redrive: exhausted" in lines
    assert "kept (permanent failure): permanent" in lines
    assert lines[-1].startswith("dry run: ")
    with opened(db) as store:
        assert {i: types_of(store, i) for i in before} == before
    assert settle_depth(e2e_prefix, 3) == 3


def test_redrive_dry_run_json_lists_each_outcome_and_changes_nothing(
    db: str, e2e_prefix: str, redrive_env: dict[str, str]
) -> None:
    seed_three_failures(db, e2e_prefix)

    result = run_cli(redrive_env, "redrive", "--dry-run", "--json")

    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["dry_run"] is True
    assert "exhausted" in report["redriven"]  # a dry run does not ask the store which are still Failed
    assert report["permanent"] == ["permanent"]
    assert settle_depth(e2e_prefix, 3) == 3


def test_redrive_retries_only_the_exhausted_failure_skips_the_delivered_one_and_keeps_the_permanent_one(
    db: str, e2e_prefix: str, redrive_env: dict[str, str]
) -> None:
    # Given
    seed_three_failures(db, e2e_prefix)
    # When
    result = run_cli(redrive_env, "redrive")
    # Then it says what it did
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "redriven: exhausted" in lines
    assert "skipped (no longer failed): delivered" in lines
    assert "kept (permanent failure): permanent" in lines
    assert lines[-1] == (
        "redriven 1, skipped 1 (not failed any more), kept 1 permanent, 0 unknown to this store, invalid 0"
    )
    # and the store agrees
    exhausted = history_json(redrive_env, "exhausted")
    assert exhausted[-1]["type"] == "RetryRequested"
    assert exhausted[-1]["requested_by"] == "redrive"
    delivered = [r["type"] for r in history_json(redrive_env, "delivered")]
    assert delivered.count("RetryRequested") == 1
    assert delivered[-1] == "Delivered"
    assert history_json(redrive_env, "permanent")[-1]["type"] == "Failed"
    # and only the permanent one is left on the queue, still marked permanent
    assert settle_depth(e2e_prefix, 1) == 1
    assert failed_queue_ids(e2e_prefix) == [("permanent", "true")]


def test_a_permanent_failure_a_person_retried_leaves_the_failed_queue_at_the_next_redrive(
    db: str, e2e_prefix: str, redrive_env: dict[str, str]
) -> None:
    # Given two permanent failures on the queue, one of which a person has retried since
    with opened(db) as store:
        seed_failed(store, "refused-then-retried", permanent=True)
        seed_failed(store, "still-refused", permanent=True)
    publish_failed(e2e_prefix, [("refused-then-retried", True), ("still-refused", True)])
    assert run_cli(redrive_env, "retry", "refused-then-retried", "--reason", "number fixed").returncode == 0
    # When a redrive runs
    result = run_cli(redrive_env, "redrive")
    # Then the retried one's entry is dropped (it tells a person nothing now); the other stays
    assert result.returncode == 0, result.stderr
    assert "skipped (no longer failed): refused-then-retried" in result.stdout.splitlines()
    assert "kept (permanent failure): still-refused" in result.stdout.splitlines()
    assert settle_depth(e2e_prefix, 1) == 1
    assert failed_queue_ids(e2e_prefix) == [("still-refused", "true")]
    assert history_json(redrive_env, "refused-then-retried")[-1]["requested_by"] == "cli:" + getpass.getuser()


def test_redrive_twice_does_not_request_a_second_retry(
    db: str, e2e_prefix: str, redrive_env: dict[str, str]
) -> None:
    # Given a redrive already happened, and the same failure is published again
    with opened(db) as store:
        seed_failed(store, "twice", permanent=False)
    publish_failed(e2e_prefix, [("twice", False)])
    assert run_cli(redrive_env, "redrive").returncode == 0
    publish_failed(e2e_prefix, [("twice", False)])
    # When
    result = run_cli(redrive_env, "redrive")
    # Then
    assert result.returncode == 0, result.stderr
    assert "skipped (no longer failed): twice" in result.stdout.splitlines()
    assert [r["type"] for r in history_json(redrive_env, "twice")].count("RetryRequested") == 1
    assert settle_depth(e2e_prefix, 0) == 0


def test_redrive_limit_1_handles_only_the_oldest_entry(
    db: str, e2e_prefix: str, redrive_env: dict[str, str]
) -> None:
    # Given two exhausted failures on the queue
    with opened(db) as store:
        seed_failed(store, "first", permanent=False)
        seed_failed(store, "second", permanent=False)
    publish_failed(e2e_prefix, [("first", False), ("second", False)])
    # When
    result = run_cli(redrive_env, "redrive", "--limit", "1")
    # Then
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "redriven: first" in lines
    assert not any("second" in line for line in lines)
    assert history_json(redrive_env, "first")[-1]["type"] == "RetryRequested"
    assert history_json(redrive_env, "second")[-1]["type"] == "Failed"
    assert settle_depth(e2e_prefix, 1) == 1
    assert failed_queue_ids(e2e_prefix) == [("second", "false")]


def test_redrive_carries_on_past_an_entry_whose_message_is_not_in_the_store(
    db: str, e2e_prefix: str, redrive_env: dict[str, str]
) -> None:
    # Given a stray entry (its message unknown to this store) ahead of a real exhausted failure
    with opened(db) as store:
        seed_failed(store, "real", permanent=False)
    publish_failed(e2e_prefix, [("ghost", False), ("real", False)])
    # When
    result = run_cli(redrive_env, "redrive")
    # Then the stray entry does not block the rest of the queue
    assert result.returncode == 0, result.stderr
    assert "redriven: real" in result.stdout.splitlines()
    assert history_json(redrive_env, "real")[-1]["type"] == "RetryRequested"


def test_redrive_of_an_empty_failed_queue_does_nothing_and_exits_0(redrive_env: dict[str, str]) -> None:
    result = run_cli(redrive_env, "redrive")

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "redriven 0, skipped 0 (not failed any more), kept 0 permanent, 0 unknown to this store, invalid 0"
    ]


def test_redrive_with_the_broker_unreachable_exits_3_with_one_line(env: dict[str, str]) -> None:
    unreachable = {**env, "SMEG_AMQP_URL": f"amqp://guest:guest@127.0.0.1:{closed_port()}/%2F"}

    result = run_cli(unreachable, "redrive")

    assert result.returncode == 3
    assert "broker" in assert_one_line_error(result)


# --- check ----------------------------------------------------------------------------------


def test_check_with_the_provider_port_closed_exits_3_with_a_failed_line_for_the_provider(
    db: str, e2e_prefix: str
) -> None:
    # Given
    env = smeg_env(
        SMEG_DATABASE_URL=db,
        SMEG_QUEUE_PREFIX=e2e_prefix,
        SMEG_PROVIDER_URL=f"http://127.0.0.1:{closed_port()}/send",
    )
    # When
    result = run_cli(env, "check")
    # Then
    assert result.returncode == 3, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith("provider default: FAILED:") for line in lines), lines
    assert "store: ok" in lines
    assert "broker: ok" in lines
    assert "Traceback" not in result.stdout + result.stderr


def test_check_with_store_broker_and_provider_reachable_exits_0_and_says_ok_for_each(
    db: str, e2e_prefix: str, stub: StubProvider
) -> None:
    # Given
    env = smeg_env(SMEG_DATABASE_URL=db, SMEG_QUEUE_PREFIX=e2e_prefix, SMEG_PROVIDER_URL=stub.url)
    # When
    result = run_cli(env, "check")
    # Then
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines() == [
        "store: ok",
        "read models: ok",
        "broker: ok",
        "provider default: ok",
    ]


def test_read_only_commands_on_a_mistyped_sqlite_path_exit_3_and_create_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "typo.db"
    env = smeg_env(SMEG_DATABASE_URL=f"sqlite:///{missing}")

    for args in (
        ["history", "m-1"],
        ["report"],
        ["audit", "export"],
        ["projections", "status"],
    ):
        result = run_cli(env, *args)
        line = assert_one_line_error(result)
        assert result.returncode == 3, args
        assert (
            line == f"smeg: no event store at {missing} (SMEG_DATABASE_URL): nothing has been recorded there"
        )
    assert list(tmp_path.iterdir()) == []


def test_check_json_gives_each_dependency_its_verdict_and_the_same_exit_code(
    db: str, e2e_prefix: str
) -> None:
    env = smeg_env(
        SMEG_DATABASE_URL=db,
        SMEG_QUEUE_PREFIX=e2e_prefix,
        SMEG_PROVIDER_URL=f"http://127.0.0.1:{closed_port()}/send",
    )

    result = run_cli(env, "check", "--json")

    assert result.returncode == 3, result.stdout + result.stderr
    verdicts = {item["dependency"]: item for item in json.loads(result.stdout)}
    assert verdicts["store"] == {"dependency": "store", "ok": True, "detail": None}
    assert verdicts["broker"]["ok"] is True
    assert verdicts["provider default"]["ok"] is False
    assert "ConnectionRefusedError" in verdicts["provider default"]["detail"]


def test_read_models_on_an_unreachable_database_fail_the_check_and_the_commands_in_one_line(
    db: str, e2e_prefix: str, stub: StubProvider
) -> None:
    # Given read models on a PostgreSQL that does not answer
    env = smeg_env(
        SMEG_DATABASE_URL=db,
        SMEG_READ_MODELS_URL=f"postgresql+psycopg://postgres@127.0.0.1:{closed_port()}/test",
        SMEG_QUEUE_PREFIX=e2e_prefix,
        SMEG_PROVIDER_URL=stub.url,
    )
    # When
    check = run_cli(env, "check")
    status = run_cli(env, "projections", "status")
    # Then
    assert check.returncode == 3, check.stdout + check.stderr
    assert any(line.startswith("read models: FAILED:") for line in check.stdout.splitlines())
    assert "store: ok" in check.stdout.splitlines()
    assert status.returncode == 3, status.stdout + status.stderr
    assert status.stderr.startswith("smeg: read-model database failed:")
    assert len(status.stderr.strip().splitlines()) == 1
    assert "Traceback" not in check.stdout + check.stderr + status.stdout + status.stderr
