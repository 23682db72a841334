"""End-to-end fixtures: ``smeg`` as a subprocess, a stub HTTP provider, and a breakable TCP proxy."""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pika
import pytest

from adapters.rabbitmq import Topology
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
AMQP_URL = os.environ.get("SMEG_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")


class StubProvider:
    """A local HTTP provider: records every call by Idempotency-Key; answers 200 after ``latency``."""

    def __init__(self, latency: float = 0.0, status: int = 200) -> None:
        self.latency, self.status = latency, status
        self.calls: Counter[str] = Counter()
        #: When each call arrived (monotonic), in order.
        self.times: list[float] = []
        self.lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                json.loads(self.rfile.read(length))
                key = self.headers["Idempotency-Key"]
                with stub.lock:
                    stub.calls[key] += 1
                    stub.times.append(time.monotonic())
                time.sleep(stub.latency)
                body = json.dumps({"id": f"stub-{key}"}).encode()
                self.send_response(stub.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            request_queue_size = 1024

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a client killed mid-request (kill -9 tests) is expected

        self.server = Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/send"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class TcpProxy:
    """Forwards a local port to RabbitMQ (or another server); ``stall()`` stops forwarding,
    ``cut()`` closes everything, ``restart(seconds)`` closes every connection and refuses new ones
    for that long (a server restarting)."""

    def __init__(self, target: tuple[str, int] = ("127.0.0.1", 5672)) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.stalled = threading.Event()
        self.closed = threading.Event()
        self.refusing = threading.Event()
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/%2F"

    def stall(self) -> None:
        self.stalled.set()

    def cut(self) -> None:
        self.closed.set()
        for sock in list(self.sockets):
            try:
                sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            except OSError:
                pass

    def restart(self, seconds: float) -> None:
        self.refusing.set()
        for sock in list(self.sockets):
            try:
                sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            except OSError:
                pass
        self.sockets.clear()
        time.sleep(seconds)
        self.refusing.clear()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.refusing.is_set():
                client.close()
                continue
            upstream = socket.create_connection(self.target)
            self.sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        peers = {a: b, b: a}
        while not self.closed.is_set():
            if self.stalled.is_set():
                time.sleep(0.1)
                continue
            try:
                ready, _, _ = select.select(list(peers), [], [], 0.1)
                for sock in ready:
                    data = sock.recv(65536)
                    if not data:
                        return
                    peers[sock].sendall(data)
            except (OSError, ValueError):  # ValueError: a socket closed under us (its fd is -1)
                return


class Smeg:
    """One ``smeg`` subprocess with its environment."""

    def __init__(self, env: dict[str, str], args: list[str], log: Path) -> None:
        self.log_path = log
        self.log = log.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "smeg_actors", *args],
            cwd=ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def wait(self, timeout: float) -> int:
        """Its exit code; one that does not exit in time fails the test with its threads' stacks
        (SIGUSR1: smeg dumps them) and the tail of its log."""
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.send_signal(signal.SIGUSR1)
            time.sleep(2)
            self.kill()
            command = " ".join(str(a) for a in self.process.args[3:])
            tail = self.output()[-6000:]
            raise AssertionError(f"smeg {command} still running {timeout} s on:\n{tail}") from None

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout: float = 30) -> None:
        wait_until(
            lambda: text in self.output() or self.assert_running(),
            timeout,
            0.1,
            message=lambda: f"{text!r} not logged:\n{self.output()[-3000:]}",
        )

    def assert_running(self) -> bool:
        """False while smeg runs (a predicate's "not yet"); AssertionError once it has exited."""
        assert self.process.poll() is None, f"smeg exited {self.process.returncode}:\n{self.output()[-3000:]}"
        return False

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


def smeg_env(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMEG_")}
    env.update(
        SMEG_LOG_FORMAT="json",
        SMEG_AMQP_URL=AMQP_URL,
        SMEG_HTTP_PORT="0",  # tests run several smeg at once; test_ops_http gives each a port
        SMEG_BACKOFF_INITIAL="0.2",
        SMEG_WORKERS="4",
        PYTHONPATH=str(ROOT),
    )
    env.update(settings)
    return env


def run_cli(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "smeg_actors", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def stub() -> Iterator[StubProvider]:
    provider = StubProvider()
    yield provider
    provider.close()


@pytest.fixture
def e2e_prefix() -> Iterator[str]:
    name = f"smege2e-{uuid.uuid4().hex[:10]}"
    try:
        pika.BlockingConnection(pika.URLParameters(AMQP_URL)).close()
    except Exception as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"RabbitMQ unreachable: {exc!r}")
        pytest.skip(f"RabbitMQ unreachable: {exc!r}")
    yield name
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    channel = connection.channel()
    for queue in ("send", "failed", "rejected"):
        channel.queue_delete(f"{name}.{queue}")
    channel.exchange_delete(f"{name}.events")
    connection.close()


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[list[Smeg]]:
    started: list[Smeg] = []
    yield started
    for smeg in started:
        smeg.kill()


@pytest.fixture
def start_smeg(processes: list[Smeg], tmp_path: Path) -> Any:
    def start(env: dict[str, str], *args: str) -> Smeg:
        smeg = Smeg(env, list(args) or ["run"], tmp_path / f"smeg-{len(processes)}.log")
        processes.append(smeg)
        return smeg

    return start


def publish_requests(prefix: str, ids: list[str], url: str = AMQP_URL) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    channel.confirm_delivery()
    Topology(prefix).declare(channel)  # as smeg declares it, poison-message arguments included
    for message_id in ids:
        body = {"message_id": message_id, "channel": "sms", "to": "+447700900123", "body": "hi"}
        channel.basic_publish(
            "", f"{prefix}.send", json.dumps(body).encode(), pika.BasicProperties(delivery_mode=2)
        )
    connection.close()
