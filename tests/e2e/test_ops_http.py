"""The ops HTTP server of ``smeg run``: /healthz, /readyz and /metrics against real processes,
the real broker and real stores."""

from __future__ import annotations

import json
import signal
import socket
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from adapters.event_store import MessageStore
from domain.message import DELIVERED
from tests.e2e.conftest import StubProvider, TcpProxy, publish_requests, run_cli
from tests.e2e.test_run import wait_all_final
from tests.e2e.test_run_processes import sqlite_env, started_group
from tests.waiting import wait_until


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except OSError as error:
        return 0, str(error)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample by (name, labels), the pid label of a per-process gauge left in."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def total(found: dict[Any, float], name: str, **labels: str) -> float:
    return sum(
        value
        for (sample, have), value in found.items()
        if sample == name and all((k, v) in have for k, v in labels.items())
    )


def test_metrics_of_two_processes_add_up_to_what_the_store_holds(
    tmp_path: Path, stub: StubProvider, e2e_prefix: str, start_smeg: Any
) -> None:
    # Given smeg run --processes 2 with its ops server on a port of its own
    port = free_port()
    env = sqlite_env(tmp_path, e2e_prefix, stub, SMEG_HTTP_PORT=str(port))
    smeg = start_smeg(env, "run", "--processes", "2")
    started_group(smeg)
    assert get(port, "/healthz") == (200, '{"alive": true}')
    wait_until(lambda: get(port, "/readyz")[0] == 200, 20, message=lambda: get(port, "/readyz")[1])

    # When 120 requests are delivered, and one that is not JSON is rejected
    ids = [f"ops-{i}" for i in range(120)]
    publish_requests(e2e_prefix, ids)
    store = MessageStore(f"sqlite:///{tmp_path}/smeg.db")
    try:
        final = wait_all_final(store, ids, timeout=60)
    finally:
        store.close()
    assert all(m.status == DELIVERED for m in final.values())

    # Then /metrics, every process added up, says what the store says
    def delivered() -> float:
        return total(samples(get(port, "/metrics")[1]), "smeg_attempts_total", outcome="delivered")

    wait_until(lambda: delivered() == len(ids), 10, message=lambda: f"{delivered()} delivered in /metrics")
    found = samples(get(port, "/metrics")[1])
    assert total(found, "smeg_messages_received_total", channel="sms") == len(ids)
    assert total(found, "smeg_provider_call_seconds_count", provider="default") == len(ids)
    assert total(found, "smeg_delivery_seconds_count", provider="default", channel="sms") == len(ids)
    assert total(found, "smeg_messages_failed_total") == 0
    assert total(found, "smeg_circuit_state", provider="default") == 0
    assert len({dict(labels).get("pid") for (name, labels) in found if name == "smeg_retries_pending"}) == 1

    def depths() -> dict[str, float]:
        found = samples(get(port, "/metrics")[1])
        return {
            dict(labels)["queue"]: v for (name, labels), v in found.items() if name == "smeg_queue_messages"
        }

    wait_until(lambda: depths() == {"send": 0, "failed": 0, "rejected": 0}, 15, message=lambda: str(depths()))

    # and it stops as one, the endpoints with it
    smeg.process.send_signal(signal.SIGTERM)
    assert smeg.wait(timeout=60) == 0
    assert get(port, "/healthz")[0] == 0


def test_a_taken_port_fails_the_start_with_a_line_naming_it(
    tmp_path: Path, stub: StubProvider, e2e_prefix: str
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = sqlite_env(tmp_path, e2e_prefix, stub, SMEG_HTTP_PORT=str(port))
        refused = run_cli(env, "run", timeout=60)
    assert refused.returncode == 3
    assert (
        f"smeg: ops HTTP server cannot listen on 127.0.0.1:{port}: Address already in use" in refused.stderr
    )


def test_readyz_turns_503_when_the_store_stops_answering_and_200_when_it_answers(
    tmp_path: Path, stub: StubProvider, e2e_prefix: str, start_smeg: Any, request: pytest.FixtureRequest
) -> None:
    # Given one smeg run on PostgreSQL reached through a proxy the test can stall
    url, schema = request.getfixturevalue("pg_schema")
    proxy = TcpProxy(("127.0.0.1", 5432))
    proxied = url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    assert proxied != url
    port = free_port()
    env = sqlite_env(tmp_path, e2e_prefix, stub, SMEG_HTTP_PORT=str(port))
    env |= {"SMEG_DATABASE_URL": proxied, "SMEG_DATABASE_SCHEMA": schema, "SMEG_PROJECTOR": "inline"}
    smeg = start_smeg(env, "run")
    wait_until(lambda: get(port, "/readyz")[0] == 200, 30, message=lambda: get(port, "/readyz")[1])

    # When the store stops answering
    proxy.stall()
    status, body = 0, ""

    def unready() -> bool:
        nonlocal status, body
        status, body = get(port, "/readyz")
        return status == 503

    wait_until(unready, 10, 0.2, message=lambda: f"still {status}: {body}")
    assert json.loads(body)["ready"] is False
    assert any("store" in reason for reason in json.loads(body)["reasons"]), body
    assert get(port, "/healthz")[0] == 200  # alive: the process rides it out (SMEG_STORE_GRACE)

    # Then it is ready again once the store answers
    proxy.stalled.clear()
    wait_until(lambda: get(port, "/readyz")[0] == 200, 30, message=lambda: get(port, "/readyz")[1])
    assert smeg.process.poll() is None
    smeg.process.send_signal(signal.SIGTERM)
    assert smeg.wait(timeout=60) == 0
    proxy.cut()
