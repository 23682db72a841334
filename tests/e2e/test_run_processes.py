"""``smeg run --processes N`` as a subprocess: N delivery processes on one SQLite file, one unit."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pika
import pytest

from adapters.event_store import MessageStore
from domain.message import DELIVERED
from tests.e2e.conftest import AMQP_URL, StubProvider, publish_requests, smeg_env
from tests.e2e.test_run import attempts_of, wait_all_final, wait_for_calls
from tests.waiting import wait_until


def logged(smeg: Any, event: str) -> list[dict[str, Any]]:
    records = []
    for line in smeg.output().splitlines():
        if line.startswith("{") and f'"{event}"' in line:
            record = json.loads(line)
            if record.get("event") == event:
                records.append(record)
    return records


def started_group(smeg: Any, count: int = 2, timeout: float = 60) -> list[int]:
    """The children's pids, once every one of them consumes."""
    wait_until(
        lambda: len(logged(smeg, "runtime_started")) >= count or smeg.assert_running(),
        timeout,
        0.1,
        message=lambda: f"group not started:\n{smeg.output()[-3000:]}",
    )
    [started] = logged(smeg, "delivery_processes_started")
    pids: list[int] = started["pids"]
    assert sorted(r["pid"] for r in logged(smeg, "runtime_started")) == sorted(pids)
    return pids


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_gone(pids: list[int], timeout: float) -> None:
    wait_until(
        lambda: not any(alive(p) for p in pids),
        timeout,
        0.1,
        message=lambda: f"still running: {[p for p in pids if alive(p)]}",
    )


def consumers(prefix: str) -> int:
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    try:
        count: int = connection.channel().queue_declare(f"{prefix}.send", passive=True).method.consumer_count
        return count
    finally:
        connection.close()


def sqlite_env(tmp_path: Path, prefix: str, stub: StubProvider, **more: str) -> dict[str, str]:
    return smeg_env(
        SMEG_DATABASE_URL=f"sqlite:///{tmp_path}/smeg.db",
        SMEG_QUEUE_PREFIX=prefix,
        SMEG_PROVIDER_URL=stub.url,
        **more,
    )


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_two_processes_on_one_store_deliver_every_message_exactly_once(
    backend: str, tmp_path: Path, e2e_prefix: str, start_smeg: Any, request: pytest.FixtureRequest
) -> None:
    # Given smeg run --processes 2 on one store: the default SQLite file, or a PostgreSQL schema
    stub = StubProvider(latency=0.01)
    env = sqlite_env(tmp_path, e2e_prefix, stub)
    url, schema = f"sqlite:///{tmp_path}/smeg.db", ""
    if backend == "postgres":
        url, schema = request.getfixturevalue("pg_schema")
        env |= {"SMEG_DATABASE_URL": url, "SMEG_DATABASE_SCHEMA": schema}
    smeg = start_smeg(env, "run", "--processes", "2")
    children = started_group(smeg)
    assert consumers(e2e_prefix) == 2
    # When
    ids = [f"grp-{i}" for i in range(400)]
    publish_requests(e2e_prefix, ids)
    # Then every message is delivered, each attempted and sent once
    store = MessageStore(url, schema=schema)
    final = wait_all_final(store, ids, timeout=90)
    assert all(m.status == DELIVERED for m in final.values())
    for message_id in ids:
        assert len(attempts_of(store, message_id)) == 1, message_id
        assert stub.calls[message_id] == 1, message_id
    # both processes delivered, and every line says which one wrote it
    assert {line["pid"] for line in logged(smeg, "attempt_finished")} == set(children)
    # and the group stops as one on SIGTERM, the start-up check printed once
    smeg.process.send_signal(signal.SIGTERM)
    assert smeg.wait(timeout=60) == 0
    assert smeg.output().count("store: ok") == 1
    assert "Traceback" not in smeg.output()
    store.close()
    stub.close()


def test_a_child_killed_ends_the_group_with_137_and_stops_its_sibling(
    tmp_path: Path, stub: StubProvider, e2e_prefix: str, start_smeg: Any
) -> None:
    smeg = start_smeg(sqlite_env(tmp_path, e2e_prefix, stub), "run", "--processes", "2")
    first, second = started_group(smeg)
    os.kill(second, signal.SIGKILL)
    assert smeg.wait(timeout=60) == 128 + signal.SIGKILL
    wait_gone([first], timeout=10)
    assert "delivery_process_exited" in smeg.output()
    assert f"smeg: stopping (exit 137): delivery process 1 (pid {second}) exited" in smeg.output()


def test_kill_9_of_the_parent_stops_its_children_and_a_fresh_group_loses_nothing(
    tmp_path: Path, e2e_prefix: str, start_smeg: Any
) -> None:
    # Given a group working through a backlog with a slow provider
    stub = StubProvider(latency=0.05)
    env = sqlite_env(tmp_path, e2e_prefix, stub, SMEG_STALE_AFTER="2", SMEG_SHUTDOWN_TIMEOUT="5")
    ids = [f"orphan-{i}" for i in range(600)]
    publish_requests(e2e_prefix, ids)
    first = start_smeg(env, "run", "--processes", "2")
    children = started_group(first)
    wait_for_calls(stub, 150, first)  # the group is delivering
    # When the parent is killed outright
    first.kill()
    # Then its children notice and stop by themselves
    wait_gone(children, timeout=20)
    assert logged(first, "parent_process_gone")
    # and a fresh group delivers everything, none lost, none sent more often than attempted
    second = start_smeg(env, "run", "--processes", "2")
    started_group(second)
    store = MessageStore(f"sqlite:///{tmp_path}/smeg.db")
    final = wait_all_final(store, ids, timeout=90)
    assert all(m.status == DELIVERED for m in final.values())
    for message_id in ids:
        assert stub.calls[message_id] <= len(attempts_of(store, message_id)), message_id
    second.process.send_signal(signal.SIGTERM)
    assert second.wait(timeout=60) == 0
    store.close()
    stub.close()


def test_a_failed_start_up_check_exits_3_with_the_lines_printed_once(
    stub: StubProvider, e2e_prefix: str, start_smeg: Any
) -> None:
    env = smeg_env(
        SMEG_DATABASE_URL="postgresql+psycopg://postgres@127.0.0.1:1/test",
        SMEG_QUEUE_PREFIX=e2e_prefix,
        SMEG_PROVIDER_URL=stub.url,
        SMEG_PROCESSES="2",
    )
    smeg = start_smeg(env)
    assert smeg.wait(timeout=60) == 3
    assert smeg.output().count("store: FAILED:") == 1
    assert "delivery_processes_started" not in smeg.output()


def test_an_invalid_process_count_exits_2_with_one_line(
    tmp_path: Path, stub: StubProvider, start_smeg: Any
) -> None:
    smeg = start_smeg(sqlite_env(tmp_path, "unused", stub), "run", "--processes", "0")
    assert smeg.wait(timeout=30) == 2
    assert smeg.output().strip().splitlines() == [
        "smeg: Invalid value for --processes: must be between 1 and 64, or auto"
    ]
