"""``smeg projections run`` alone serves /healthz, /readyz and /metrics with the projection lag
(SQLite, no broker needed: the events exchange is left unreachable, so its lag stays); as a child
of ``smeg run`` it opens no port; a taken port is exit 3 with one line naming it."""

from __future__ import annotations

import json
import os
import signal
import socket
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from adapters.event_store import Change, MessageStore
from adapters.sql import make_engine, read_models_beside
from domain.message import Message
from smeg_actors.runtime.read_models import follower_status
from tests.e2e.conftest import StubProvider, run_cli, smeg_env
from tests.e2e.test_ops_http import free_port, get, samples
from tests.e2e.test_run_processes import sqlite_env
from tests.waiting import wait_until

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=timezone.utc)
READ_MODELS = ("message_status", "delivery_stats_hourly", "delivery_stats_minutely", "failures_by_reason")


def seeded(tmp_path: Path, count: int = 4) -> tuple[str, int]:
    """A SQLite store of ``count`` delivered messages (three events each): its URL and head."""
    url = f"sqlite:///{tmp_path}/smeg.db"
    store = MessageStore(url)
    try:
        messages = []
        for i in range(count):
            message = Message.receive(
                message_id=f"p-{i}", channel="sms", to="+447700900123", body="hi", correlation_id="c", now=T0
            )
            message.start_attempt("prov-a", now=T0)
            message.record_delivery("pid", now=T0, latency_ms=1.0)
            messages.append(message)
        assert all(o.saved for o in store.commit([Change(load=lambda m=m: m) for m in messages]))
        return url, store.max_position()
    finally:
        store.close()


def projector_env(url: str, port: int, **more: str) -> dict[str, str]:
    nowhere = f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F"  # nothing listens: publication waits
    return smeg_env(SMEG_DATABASE_URL=url, SMEG_AMQP_URL=nowhere, SMEG_HTTP_PORT=str(port), **more)


def lags(port: int, unit: str = "events") -> dict[str, float]:
    found = samples(get(port, "/metrics")[1])
    return {
        dict(labels)["projection"]: value
        for (name, labels), value in found.items()
        if name == f"smeg_projection_lag_{unit}"
    }


def test_alone_it_serves_its_probes_and_the_lag_of_each_follower(tmp_path: Path, start_smeg: Any) -> None:
    # Given a store holding 12 events, and smeg projections run on a port of its own
    url, head = seeded(tmp_path)
    port, metrics_dir = free_port(), tmp_path / "metrics"
    smeg = start_smeg(projector_env(url, port, SMEG_METRICS_DIR=str(metrics_dir)), "projections", "run")

    # Then it is alive and, its loop stepping and its store answering, ready
    wait_until(
        lambda: get(port, "/healthz") == (200, '{"alive": true}') or smeg.assert_running(),
        30,
        0.1,
        message=lambda: f"{get(port, '/healthz')}\n{smeg.output()[-3000:]}",
    )
    wait_until(lambda: get(port, "/readyz")[0] == 200, 10, message=lambda: get(port, "/readyz")[1])
    assert json.loads(get(port, "/readyz")[1]) == {"ready": True, "reasons": []}
    assert [path.name for path in metrics_dir.iterdir()] == [f"smeg-metrics-{smeg.process.pid}"]

    # and /metrics says the read models caught up (lag 0) while the events exchange, its broker
    # unreachable, is the whole log behind
    expected = dict.fromkeys(READ_MODELS, 0.0) | {"events_exchange": float(head)}
    wait_until(
        lambda: lags(port) == expected, 20, 0.2, message=lambda: f"{lags(port)}\n{smeg.output()[-2000:]}"
    )
    seconds = lags(port, "seconds")
    assert [seconds[name] for name in READ_MODELS] == [0.0] * len(READ_MODELS)
    assert seconds["events_exchange"] >= (datetime.now(timezone.utc) - T0).total_seconds() - 60
    assert "queue_depth_unreadable" not in smeg.output()  # the queues' depths are smeg run's to read

    # When it is stopped, it exits 0, its endpoints and its metrics directory with it
    smeg.process.send_signal(signal.SIGTERM)
    assert smeg.wait(timeout=30) == 0
    assert get(port, "/healthz")[0] == 0
    assert list(metrics_dir.iterdir()) == []


def test_smeg_run_serves_the_lag_its_projector_child_catches_up(
    tmp_path: Path, stub: StubProvider, e2e_prefix: str, start_smeg: Any
) -> None:
    # Given a store holding 12 events, and smeg run (its projector a child process) on a port
    _url, head = seeded(tmp_path)
    port = free_port()
    smeg = start_smeg(sqlite_env(tmp_path, e2e_prefix, stub, SMEG_HTTP_PORT=str(port)), "run")
    smeg.wait_for_log("runtime_started")

    # Then its /metrics shows every follower caught up, the events exchange too
    caught_up = dict.fromkeys((*READ_MODELS, "events_exchange"), 0.0)
    wait_until(
        lambda: lags(port) == caught_up or smeg.assert_running(),
        20,
        0.2,
        message=lambda: f"{lags(port)} (head {head})\n{smeg.output()[-2000:]}",
    )
    assert lags(port, "seconds") == caught_up
    smeg.process.send_signal(signal.SIGTERM)
    assert smeg.wait(timeout=60) == 0


def test_as_a_child_of_smeg_run_it_opens_no_port(tmp_path: Path, start_smeg: Any) -> None:
    # Given smeg projections run started as smeg run starts it: with its parent's pid and
    # metrics directory, and a port set in the environment it inherits
    url, _head = seeded(tmp_path)
    port, inherited = free_port(), tmp_path / f"smeg-metrics-{os.getpid()}"
    inherited.mkdir()
    env = projector_env(url, port, SMEG_PARENT_PID=str(os.getpid()), PROMETHEUS_MULTIPROC_DIR=str(inherited))
    smeg = start_smeg(env, "projections", "run")

    # When it has caught up
    store, engine = MessageStore(url), make_engine(read_models_beside(url))

    def caught_up() -> bool:
        smeg.assert_running()
        try:
            rows = follower_status(store, engine)
        except Exception:  # its tables not made yet
            return False
        return {row.name: row.lag_events for row in rows if row.name in READ_MODELS} == dict.fromkeys(
            READ_MODELS, 0
        )

    try:
        wait_until(caught_up, 30, 0.2, message=lambda: smeg.output()[-3000:])
    finally:
        store.close()
        engine.dispose()

    # Then nothing listens on the port, and it stops leaving its parent's directory in place
    assert get(port, "/healthz")[0] == 0
    assert "ops_http_listening" not in smeg.output()
    smeg.process.send_signal(signal.SIGTERM)
    assert smeg.wait(timeout=30) == 0
    assert inherited.is_dir()


def test_a_taken_port_fails_the_start_with_one_line_naming_it(tmp_path: Path) -> None:
    url, _head = seeded(tmp_path)
    metrics_dir = tmp_path / "metrics"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        refused = run_cli(projector_env(url, port, SMEG_METRICS_DIR=str(metrics_dir)), "projections", "run")
    assert refused.returncode == 3, refused.stderr
    said = [line for line in refused.stderr.splitlines() if line.startswith("smeg:")]
    assert said == [f"smeg: ops HTTP server cannot listen on 127.0.0.1:{port}: Address already in use"]
    assert "Traceback" not in refused.stderr
    assert list(metrics_dir.iterdir()) == []
