"""What the benchmark scripts share: settings, cleanup helpers, PostgreSQL schemas, processes.

Imported by ``scripts/bench_*.py`` (which put this folder on ``sys.path``); not part of smeg.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from pathlib import Path
from types import FrameType
from typing import Any

import pika
import pika.exceptions
import psycopg
from psycopg import sql
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parents[2]

AMQP_URL = os.environ.get("SMEG_BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")


POSTGRES_URL = os.environ.get("SMEG_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
PYTHON = ROOT / ".venv" / "bin" / "python"


class BenchAborted(Exception):
    """A run could not complete; the message says why."""


def interrupt(signum: int, _frame: FrameType | None) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print(f"\n{signal.Signals(signum).name}: stopping, cleaning up (further signals ignored) …", flush=True)
    raise KeyboardInterrupt


def safely(what: str, action: Callable[[], Any]) -> Callable[[], None]:
    """A cleanup callback that reports its failure instead of raising it."""

    def run() -> None:
        try:
            action()
        except Exception as exc:
            print(f"  cleanup: {what} failed: {one_line(exc)}", flush=True)

    return run


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def choices(value: str, allowed: tuple[str, ...]) -> list[str]:
    picked = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [v for v in picked if v not in allowed]
    if unknown or not picked:
        raise argparse.ArgumentTypeError(f"choose from {','.join(allowed)} (got {value!r})")
    return picked


def libpq_conninfo(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def create_schema(schema: str) -> None:
    with psycopg.connect(libpq_conninfo(POSTGRES_URL), autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))


def drop_schema(schema: str) -> None:
    with psycopg.connect(libpq_conninfo(POSTGRES_URL), autocommit=True, connect_timeout=5) as conn:
        conn.execute("SET lock_timeout = '30s'")
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def stop_process(proc: subprocess.Popen[bytes], timeout: float) -> int:
    """SIGTERM, wait, then SIGKILL its process group (only this child's own session)."""
    if proc.poll() is None:
        with suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            print(
                f"  pid {proc.pid} ignored SIGTERM for {timeout:g} s: killing its process group", flush=True
            )
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    return proc.wait(10)


def clean_env() -> dict[str, str]:
    """The environment without any SMEG_* setting of the caller's (they would change the run)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("SMEG_")}


def smeg_request(message_id: str) -> bytes:
    request = {
        "message_id": message_id,
        "channel": "sms",
        "to": "+447700900123",
        "body": "Your code is 123456",
    }
    return json.dumps(request).encode()


class Rabbit:
    """A small pika client for the bench itself: declare, publish, poll depth, delete."""

    def __init__(self, url: str = AMQP_URL, *, name: str = "smeg-bench") -> None:
        self.url, self.name = url, name
        self._connection: pika.BlockingConnection | None = None
        self._channel: Any = None

    def channel(self) -> Any:
        if self._connection is None or not self._connection.is_open:
            params = pika.URLParameters(self.url)
            params.client_properties = {"connection_name": self.name}
            self._connection = pika.BlockingConnection(params)
            self._channel = None
        if self._channel is None or not self._channel.is_open:
            self._channel = self._connection.channel()
        return self._channel

    def declare(self, queue: str, arguments: dict[str, Any]) -> None:
        self.channel().queue_declare(queue, durable=True, arguments=arguments)

    def publish(self, queue: str, bodies: Iterator[bytes]) -> int:
        channel, sent = self.channel(), 0
        properties = pika.BasicProperties(
            delivery_mode=pika.DeliveryMode.Persistent, content_type="application/json"
        )
        for body in bodies:
            channel.basic_publish("", queue, body, properties)
            sent += 1
        return sent

    def depth(self, queue: str) -> int | None:
        """Ready messages in ``queue`` (None if it does not exist)."""
        try:
            result = self.channel().queue_declare(queue, passive=True)
        except pika.exceptions.ChannelClosedByBroker:
            self._channel = None
            return None
        return int(result.method.message_count)

    def wait_depth(self, queue: str, expected: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        seen: int | None = None
        while time.monotonic() < deadline:
            seen = self.depth(queue)
            if seen == expected:
                return
            time.sleep(0.05)
        raise BenchAborted(f"queue {queue} holds {seen} messages, expected {expected}")

    def delete_queues(self, *queues: str) -> None:
        for queue in queues:
            try:
                self.channel().queue_delete(queue)
            except pika.exceptions.ChannelClosedByBroker:
                self._channel = None

    def delete_exchange(self, exchange: str) -> None:
        try:
            self.channel().exchange_delete(exchange)
        except pika.exceptions.ChannelClosedByBroker:
            self._channel = None

    def close(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None and connection.is_open:
            with suppress(Exception):
                connection.close()
