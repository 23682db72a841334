"""``smeg`` as a subprocess against the real RabbitMQ and PostgreSQL, with a stub HTTP provider."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

from adapters.event_store import MessageStore
from domain.message import DELIVERED, FAILED, Message
from tests.e2e.conftest import AMQP_URL, StubProvider, TcpProxy, publish_requests, run_cli, smeg_env
from tests.waiting import wait_until


def wait_all_final(store: MessageStore, ids: list[str], timeout: float) -> dict[str, Message]:
    final: dict[str, Message] = {}

    def all_final() -> bool:
        for message_id in ids:
            if message_id in final:
                continue
            try:
                message = store.get_by_message_id(message_id)
            except Exception:
                continue
            if message.status in (DELIVERED, FAILED):
                final[message_id] = message
        return len(final) == len(ids)

    def missing() -> str:
        left = sorted(set(ids) - set(final))
        return f"{len(left)} messages not final, e.g. {left[:5]}"

    wait_until(all_final, timeout, 0.2, message=missing)
    return final


def wait_for_calls(stub: StubProvider, count: int, smeg: Any, timeout: float = 60) -> None:
    """Until the provider got ``count`` calls (the backlog is being delivered)."""
    wait_until(
        lambda: sum(stub.calls.values()) >= count,
        timeout,
        0.02,
        message=lambda: f"{sum(stub.calls.values())} provider calls, not {count}:\n{smeg.output()[-3000:]}",
    )


def attempts_of(store: MessageStore, message_id: str) -> list[Any]:
    return [e for e in store.history(Message.create_id(message_id)) if isinstance(e, Message.Attempted)]


def test_run_delivers_and_history_json_shows_the_timeline(
    tmp_path: Path, stub: StubProvider, e2e_prefix: str, start_smeg: Any
) -> None:
    # Given
    db = f"sqlite:///{tmp_path}/smeg.db"
    env = smeg_env(SMEG_DATABASE_URL=db, SMEG_QUEUE_PREFIX=e2e_prefix, SMEG_PROVIDER_URL=stub.url)
    smeg = start_smeg(env)
    smeg.wait_for_log("runtime_started")
    # When
    publish_requests(e2e_prefix, ["e2e-1"])
    store = MessageStore(db)
    wait_all_final(store, ["e2e-1"], timeout=20)
    result = run_cli(env, "history", "e2e-1", "--json")
    # Then
    assert result.returncode == 0, result.stderr
    records = json.loads(result.stdout)
    assert [r["type"] for r in records] == ["Received", "Attempted", "Delivered"]
    assert [r["version"] for r in records] == [1, 2, 3]
    assert records[0]["to"] == "+447700900123"
    assert records[2]["provider_message_id"] == "stub-e2e-1"
    human = run_cli(env, "history", "e2e-1")
    assert "*********0123" in human.stdout and "+447700900123" not in human.stdout
    smeg.process.send_signal(signal.SIGTERM)
    assert smeg.wait(timeout=40) == 0
    store.close()


def test_startup_with_store_down_exits_3_with_one_line_per_dependency(
    stub: StubProvider, e2e_prefix: str, start_smeg: Any
) -> None:
    env = smeg_env(
        SMEG_DATABASE_URL="postgresql+psycopg://postgres@127.0.0.1:1/test",
        SMEG_QUEUE_PREFIX=e2e_prefix,
        SMEG_PROVIDER_URL=stub.url,
    )
    smeg = start_smeg(env)
    assert smeg.wait(timeout=60) == 3
    output = smeg.output()
    assert "store: FAILED:" in output
    assert "broker: ok" in output
    assert "provider default: ok" in output
    assert "Traceback" not in output


def test_startup_with_broker_down_exits_3(
    tmp_path: Path, stub: StubProvider, e2e_prefix: str, start_smeg: Any
) -> None:
    env = smeg_env(
        SMEG_DATABASE_URL=f"sqlite:///{tmp_path}/smeg.db",
        SMEG_AMQP_URL="amqp://guest:guest@127.0.0.1:1/%2F",
        SMEG_QUEUE_PREFIX=e2e_prefix,
        SMEG_PROVIDER_URL=stub.url,
    )
    smeg = start_smeg(env)
    assert smeg.wait(timeout=60) == 3
    assert "broker: FAILED:" in smeg.output()
    assert "store: ok" in smeg.output()
    check = run_cli(env, "check")
    assert check.returncode == 3 and "broker: FAILED:" in check.stdout


def test_broker_stall_makes_run_exit_4_within_two_heartbeats(
    tmp_path: Path, stub: StubProvider, e2e_prefix: str, start_smeg: Any
) -> None:
    # Given smeg connected through a proxy, heartbeat 2 s
    proxy = TcpProxy()
    heartbeat = 2
    env = smeg_env(
        SMEG_DATABASE_URL=f"sqlite:///{tmp_path}/smeg.db",
        SMEG_AMQP_URL=proxy.url(),
        SMEG_QUEUE_PREFIX=e2e_prefix,
        SMEG_PROVIDER_URL=stub.url,
        SMEG_HEARTBEAT=str(heartbeat),
    )
    smeg = start_smeg(env)
    smeg.wait_for_log("runtime_started")
    # When the network goes silent
    proxy.stall()
    started = time.monotonic()
    # Then
    assert smeg.wait(timeout=60) == 4
    assert time.monotonic() - started <= 2 * (heartbeat + 5)
    proxy.cut()


def test_broker_connection_cut_makes_run_exit_4(
    tmp_path: Path, stub: StubProvider, e2e_prefix: str, start_smeg: Any
) -> None:
    proxy = TcpProxy()
    env = smeg_env(
        SMEG_DATABASE_URL=f"sqlite:///{tmp_path}/smeg.db",
        SMEG_AMQP_URL=proxy.url(),
        SMEG_QUEUE_PREFIX=e2e_prefix,
        SMEG_PROVIDER_URL=stub.url,
        SMEG_HEARTBEAT="5",
    )
    smeg = start_smeg(env)
    smeg.wait_for_log("runtime_started")
    started = time.monotonic()
    proxy.cut()
    assert smeg.wait(timeout=60) == 4
    assert time.monotonic() - started <= 2 * (5 + 5)
    assert "broker_connection_lost" in smeg.output()


def test_kill_9_under_load_then_fresh_run_loses_nothing(
    tmp_path: Path, e2e_prefix: str, start_smeg: Any
) -> None:
    # Given a slow provider and a backlog
    stub = StubProvider(latency=0.05)
    db = f"sqlite:///{tmp_path}/smeg.db"
    env = smeg_env(
        SMEG_DATABASE_URL=db,
        SMEG_QUEUE_PREFIX=e2e_prefix,
        SMEG_PROVIDER_URL=stub.url,
        SMEG_STALE_AFTER="2",
        SMEG_WORKERS="4",
    )
    ids = [f"k-{i}" for i in range(600)]
    publish_requests(e2e_prefix, ids)
    first = start_smeg(env)
    first.wait_for_log("runtime_started")
    wait_for_calls(stub, 150, first)
    # When
    first.kill()
    second = start_smeg(env)
    # Then every confirmed request ends final, none lost
    store = MessageStore(db)
    final = wait_all_final(store, ids, timeout=90)
    assert all(m.status == DELIVERED for m in final.values())
    # and a message reached the provider more often than it was attempted never;
    # twice only where the kill fell between the call and its outcome (same Idempotency-Key)
    for message_id in ids:
        attempts = attempts_of(store, message_id)
        assert stub.calls[message_id] <= len(attempts), message_id
        if len(attempts) > 1:
            reasons = [
                e.reason
                for e in store.history(Message.create_id(message_id))
                if isinstance(e, Message.BackedOff)
            ]
            assert reasons == ["interrupted"], (message_id, reasons)
    second.process.send_signal(signal.SIGTERM)
    assert second.wait(timeout=40) == 0
    store.close()
    stub.close()


def test_two_processes_share_queue_and_store_without_duplicate_attempts(
    pg_schema: tuple[str, str], e2e_prefix: str, start_smeg: Any
) -> None:
    # Given two smeg processes on one PostgreSQL store and one queue
    url, schema = pg_schema
    stub = StubProvider(latency=0.01)
    env = smeg_env(
        SMEG_DATABASE_URL=url,
        SMEG_DATABASE_SCHEMA=schema,
        SMEG_QUEUE_PREFIX=e2e_prefix,
        SMEG_PROVIDER_URL=stub.url,
    )
    a = start_smeg(env)
    a.wait_for_log("runtime_started")
    b = start_smeg(env)
    b.wait_for_log("runtime_started")
    # When
    ids = [f"two-{i}" for i in range(400)]
    publish_requests(e2e_prefix, ids)
    # Then
    store = MessageStore(url, schema=schema)
    final = wait_all_final(store, ids, timeout=90)
    assert all(m.status == DELIVERED for m in final.values())
    for message_id in ids:
        assert len(attempts_of(store, message_id)) == 1, message_id
        assert stub.calls[message_id] == 1, message_id
    assert "attempt_finished" in a.output() and "attempt_finished" in b.output()
    store.close()
    stub.close()


def test_store_lost_while_running_exits_6_and_acks_nothing_undurable(
    pg_schema: tuple[str, str], stub: StubProvider, e2e_prefix: str, start_smeg: Any
) -> None:
    # Given smeg whose PostgreSQL connections go through a proxy
    url, schema = pg_schema
    proxy = TcpProxy(target=("127.0.0.1", 5432))
    proxied = url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    env = smeg_env(
        SMEG_DATABASE_URL=proxied,
        SMEG_DATABASE_SCHEMA=schema,
        SMEG_QUEUE_PREFIX=e2e_prefix,
        SMEG_PROVIDER_URL=stub.url,
        SMEG_STORE_GRACE="3",
        SMEG_DATABASE_TIMEOUT="2",
    )
    smeg = start_smeg(env)
    smeg.wait_for_log("runtime_started")
    # When the database's network goes silent and requests keep coming
    proxy.stall()
    publish_requests(e2e_prefix, [f"lost-{i}" for i in range(5)])
    # Then smeg exits 6 in time, and the requests are back on the queue, unacked
    assert smeg.wait(timeout=60) == 6
    assert "event store unavailable" in smeg.output()
    proxy.cut()
    # and a fresh process with the store back delivers them all
    direct = dict(env, SMEG_DATABASE_URL=url)
    again = start_smeg(direct)
    store = MessageStore(url, schema=schema)
    final = wait_all_final(store, [f"lost-{i}" for i in range(5)], timeout=60)
    assert all(m.status == DELIVERED for m in final.values())
    again.process.send_signal(signal.SIGTERM)
    assert again.wait(timeout=40) == 0
    store.close()


def test_queue_deleted_under_the_consumer_makes_run_exit_4(
    tmp_path: Path, stub: StubProvider, e2e_prefix: str, start_smeg: Any
) -> None:
    # Given a running smeg
    smeg = started_on_sqlite(tmp_path, stub, e2e_prefix, start_smeg)
    # When the broker cancels its consumer (the queue is deleted by an operator)
    import pika

    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    connection.channel().queue_delete(f"{e2e_prefix}.send")
    connection.close()
    # Then it does not live on consuming nothing: exit 4
    assert smeg.wait(timeout=30) == 4
    assert "consumer" in smeg.output()


def test_external_projector_keeps_read_models_and_events_while_run_only_delivers(
    tmp_path: Path, stub: StubProvider, e2e_prefix: str, start_smeg: Any
) -> None:
    # Given smeg run without read models, and a separate projections runner
    import pika

    db = f"sqlite:///{tmp_path}/smeg.db"
    env = smeg_env(
        SMEG_DATABASE_URL=db,
        SMEG_QUEUE_PREFIX=e2e_prefix,
        SMEG_PROVIDER_URL=stub.url,
        SMEG_PROJECTOR="external",
    )
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    channel = connection.channel()
    channel.exchange_declare(f"{e2e_prefix}.events", exchange_type="topic", durable=True)
    events_queue = channel.queue_declare("", exclusive=True).method.queue
    channel.queue_bind(events_queue, f"{e2e_prefix}.events", routing_key="message.delivered")
    run = start_smeg(env)
    run.wait_for_log("runtime_started")
    projections = start_smeg(env, "projections", "run")
    # When
    ids = [f"ext-{i}" for i in range(50)]
    publish_requests(e2e_prefix, ids)
    # Then every message is delivered, counted in message_status and announced on the exchange
    store = MessageStore(db)
    wait_all_final(store, ids, timeout=30)
    delivered = wait_delivered_in_read_model(db, 50, timeout=20)
    assert delivered == 50
    announced = 0

    def all_announced() -> bool:
        nonlocal announced
        while announced < 50 and channel.basic_get(events_queue, auto_ack=True)[0] is not None:
            announced += 1
        return announced == 50

    wait_until(all_announced, 20, message=lambda: f"{announced} of 50 deliveries announced")
    assert "projection_caught_up" not in run.output()
    connection.close()
    for process in (run, projections):
        process.process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=40) == 0
    store.close()


def test_sigterm_under_load_then_a_fresh_run_loses_nothing(
    tmp_path: Path, e2e_prefix: str, start_smeg: Any
) -> None:
    # Given a backlog being delivered through a slow provider
    stub = StubProvider(latency=0.05)
    db = f"sqlite:///{tmp_path}/smeg.db"
    env = smeg_env(SMEG_DATABASE_URL=db, SMEG_QUEUE_PREFIX=e2e_prefix, SMEG_PROVIDER_URL=stub.url)
    ids = [f"term-{i}" for i in range(2000)]
    publish_requests(e2e_prefix, ids)
    first = start_smeg(env)
    first.wait_for_log("runtime_started")
    wait_for_calls(stub, 300, first)
    # When it is stopped gracefully mid-way, and started again
    first.process.send_signal(signal.SIGTERM)
    stopping = time.monotonic()
    assert first.wait(timeout=40) == 0
    assert time.monotonic() - stopping < 10  # in-flight batches finish; the backlog is left durable
    second = start_smeg(env)
    second.wait_for_log("runtime_started")
    # Then every request ends Delivered, and each reached the provider once per attempt at most
    store = MessageStore(db)
    final = wait_all_final(store, ids, timeout=90)
    assert all(m.status == DELIVERED for m in final.values())
    for message_id in ids:
        assert stub.calls[message_id] <= len(attempts_of(store, message_id)), message_id
    second.process.send_signal(signal.SIGTERM)
    assert second.wait(timeout=40) == 0
    store.close()
    stub.close()


def projector_pids(output: str) -> list[int]:
    pids = []
    for line in output.splitlines():
        if '"projector_process_started"' in line:
            pids.append(int(json.loads(line)["pid"]))
    return pids


def gone(pid: int) -> bool:
    """The process has exited (a zombie counts: it runs nothing)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in status


def delivered_in_read_model(db: str) -> int:
    from sqlalchemy import func, select

    from adapters.sql import make_engine, read_models_beside
    from adapters.status_view import message_status

    engine = make_engine(read_models_beside(db))
    try:
        with engine.connect() as connection:
            query = (
                select(func.count()).select_from(message_status).where(message_status.c.status == "delivered")
            )
            return int(connection.scalar(query) or 0)
    except Exception:
        return 0
    finally:
        engine.dispose()


def wait_delivered_in_read_model(db: str, count: int, timeout: float = 30) -> int:
    """Poll message_status until it shows ``count`` delivered; return what it shows then
    (AssertionError if it does not within ``timeout``)."""
    shown = [0]

    def enough() -> bool:
        shown[0] = delivered_in_read_model(db)
        return shown[0] >= count

    wait_until(enough, timeout, 0.1, message=lambda: f"{shown[0]} delivered in message_status, not {count}")
    return shown[0]


def test_run_keeps_its_projector_process_alive_and_takes_it_down_with_it(
    tmp_path: Path, stub: StubProvider, e2e_prefix: str, start_smeg: Any
) -> None:
    # Given smeg run with its projector in a child process (the default on PostgreSQL)
    import os

    db = f"sqlite:///{tmp_path}/smeg.db"
    env = smeg_env(
        SMEG_DATABASE_URL=db,
        SMEG_QUEUE_PREFIX=e2e_prefix,
        SMEG_PROVIDER_URL=stub.url,
        SMEG_PROJECTOR="process",
    )
    smeg = start_smeg(env)
    smeg.wait_for_log("projector_process_started")
    smeg.wait_for_log("runtime_started")
    [first] = projector_pids(smeg.output())
    # (the child booted before consumption began)
    output = smeg.output()
    assert output.index('"projector_ready"') < output.index('"runtime_started"')
    # When requests arrive, the child keeps the read models
    publish_requests(e2e_prefix, [f"proc-{i}" for i in range(20)])
    assert wait_delivered_in_read_model(db, 20) >= 20
    # When the child dies, the supervisor starts another, which carries on
    os.kill(first, signal.SIGKILL)
    wait_until(
        lambda: len(projector_pids(smeg.output())) >= 2,
        20,
        0.1,
        message=lambda: f"no second projector process:\n{smeg.output()[-2000:]}",
    )
    pids = projector_pids(smeg.output())
    assert len(pids) == 2 and pids[1] != first, smeg.output()[-2000:]
    publish_requests(e2e_prefix, [f"proc-late-{i}" for i in range(10)])
    assert wait_delivered_in_read_model(db, 30) >= 30
    # When smeg run is killed outright, its child does not outlive it
    smeg.process.kill()
    smeg.process.wait(10)
    wait_until(lambda: gone(pids[1]), 10, 0.1, message="the projector process outlived smeg run")


def test_a_sigterm_the_kernel_hands_to_another_thread_still_stops_run_gracefully(
    tmp_path: Path, stub: StubProvider, e2e_prefix: str, start_smeg: Any
) -> None:
    # Given smeg run with its threads up
    import ctypes
    import os
    import platform

    smeg = started_on_sqlite(tmp_path, stub, e2e_prefix, start_smeg)
    pid = smeg.process.pid
    [thread, *_] = sorted(int(t) for t in os.listdir(f"/proc/{pid}/task") if int(t) != pid)

    # When SIGTERM is delivered to a thread other than the main one (tgkill, as the kernel may)
    sys_tgkill = {"x86_64": 234, "aarch64": 131}[platform.machine()]
    assert ctypes.CDLL(None).syscall(sys_tgkill, pid, thread, signal.SIGTERM) == 0

    # Then the main thread still handles it: a graceful stop, exit 0
    assert smeg.wait(timeout=20) == 0
    assert '"signal_received"' in smeg.output()


def started_on_sqlite(tmp_path: Path, stub: StubProvider, prefix: str, start_smeg: Any) -> Any:
    """``smeg run`` on a SQLite store and the stub provider, once it consumes."""
    env = smeg_env(
        SMEG_DATABASE_URL=f"sqlite:///{tmp_path}/smeg.db",
        SMEG_QUEUE_PREFIX=prefix,
        SMEG_PROVIDER_URL=stub.url,
    )
    smeg = start_smeg(env)
    smeg.wait_for_log("runtime_started")
    return smeg
