"""Chaos proof: several ``smeg run`` processes on one store and one queue, one SIGKILLed every few seconds.

What it shows (issue 13): under ``kill -9`` of random delivery processes and a provider that fails
a fifth of its calls, smeg loses no message, leaves none stuck, writes only legal histories, and
has the provider accept one message twice only when the caller never saw the first answer (its
process was killed mid-call, or it stopped waiting: a timeout), always with the same
``Idempotency-Key``.

How: the script creates a PostgreSQL schema and a RabbitMQ queue prefix of its own, serves a local
HTTP provider (``ChaosProvider``: answers 503 to ``--fault-rate`` of the calls, and records every
call with its ``Idempotency-Key``, the message id of its body and the process that made it, known
from a bearer token each process gets in its environment), starts ``--processes`` independent
``smeg run`` processes (slot 0 keeps the projector child, the others run ``SMEG_PROJECTOR=external``;
a killed slot is restarted with the same role, so there is one projector again once the killed one's
child has noticed its parent is gone), publishes ``--messages`` send requests with publisher
confirms, and every ``--kill-every`` seconds SIGKILLs one slot at random (each slot once per round of
``--processes`` kills, in a random order) and starts it again.
Killing stops when every message is final (read model) or, with ``--max-kills``, after that many
kills; in any case after ``--chaos-timeout`` or when nothing has become final for a whole
``--drain``. The processes then get a bounded ``--drain`` and SIGTERM (once each consumes: a
SIGTERM during boot tells nothing).
The verdict comes from the store itself, read through ``smeg audit export`` (every event, as an
operator would replay them), and from the provider's log:

- lost: a published message with no event at all;
- stuck: a message whose history ends neither in Delivered nor in Failed after the drain;
- failed: a message that ended Failed, a violation too: every fault is transient, the backoff is
  scaled down (0.2 s, ×2, at most 2 s) and ``SMEG_MAX_ATTEMPTS`` raised to 30, so exhausting
  the attempts would take 30 faults in a row (0.2^30);
- invalid: a history that breaks the lifecycle (Received first, then Attempted each followed by
  exactly one BackedOff/Delivered/Failed, attempt numbers one by one, no attempt before retry_at
  unless held, Held only between attempts, nothing after Delivered, only RetryRequested after
  Failed). A 20 % fault rate may trip the provider's circuit breaker by chance; the provider's
  circuit is configured with short open periods so a trip resolves within the drain;
- provider: a call whose key differs from its message id, more calls than Attempted events, a
  receipt in Delivered the provider never gave or gave before that attempt began (an earlier
  attempt's answer recorded against a later one), more answers (acceptances or 503s) missing from
  a history than attempts closed as interrupted or timed out, or an answer to a process that was
  never killed missing without a timeout recorded for it;
- also: read models that disagree with the store, requests left on the send queue or routed to the
  rejected or failed queues, a process that exited by itself or did not stop cleanly on SIGTERM, a
  projector child that outlived its killed or stopped parent.

Run it from the project root (RabbitMQ on 127.0.0.1:5672, PostgreSQL on 127.0.0.1:5432 db ``test``;
scripts/start_services.sh starts both)::

    .venv/bin/python scripts/chaos.py                       # 20,000 messages, 3 processes, kill every 5 s
    .venv/bin/python scripts/chaos.py --messages 2000 --kill-every 2.5 --publish-rate 200 --max-kills 8
    .venv/bin/python scripts/chaos.py --smeg-root /tmp/smeg-snapshot   # smeg from another source tree

Exit code 0 when every invariant held, 1 on any violation, 2 when the run itself could not be made.
tests/e2e/test_chaos.py runs a shorter version of it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Collection, Iterable, Iterator
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pika
import pika.exceptions
import psycopg
from psycopg import sql
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent

# The script treats smeg as a black box (processes, SQL, AMQP, HTTP) and imports none of its code:
# these are the statuses of the ``message_status`` read model and the reason of an interruption.
RECEIVED, IN_FLIGHT, BACKED_OFF, HELD, DELIVERED, FAILED = (
    "received",
    "in_flight",
    "backed_off",
    "held",
    "delivered",
    "failed",
)
INTERRUPTED = "interrupted"

AMQP_URL = os.environ.get("SMEG_CHAOS_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
POSTGRES_URL = os.environ.get("SMEG_CHAOS_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
#: The environment variable that carries each process's name to the provider (as its bearer token).
INCARNATION_ENV = "CHAOS_INCARNATION"
POLL = 0.25
PROGRESS_EVERY = 5.0
LOG_TAIL = 20


@dataclass
class ChaosConfig:
    """One run's parameters (the command line's options, also what the e2e test passes)."""

    messages: int = 20_000
    processes: int = 3
    kill_every: float = 5.0
    fault_rate: float = 0.2
    database_url: str = POSTGRES_URL
    amqp_url: str = AMQP_URL
    #: Seconds each provider call takes: calls in flight are what a kill can cut.
    provider_latency: float = 0.02
    #: The provider's ``timeout`` (smeg's default); a call answered later than smeg waits for is
    #: retried, and the provider may then have accepted it twice (at least once, same key).
    provider_timeout: float = 5.0
    #: Send requests per second (0: as fast as confirms come back).
    publish_rate: float = 0.0
    #: After killing stops: the longest wait for every message to be final.
    drain: float = 120.0
    #: The longest the killing goes on (it stops earlier once every message is final).
    chaos_timeout: float = 900.0
    #: Exactly this many kills (0: until every message is final), unless ``chaos_timeout`` comes
    #: first; the run then drains.
    max_kills: int = 0
    #: ``SMEG_STALE_AFTER``: when an attempt cut by a kill is closed as interrupted and retried;
    #: above a batch's deadline (timeout + 5 s) with room for the outcome's commit under load, as
    #: a live attempt deemed stale would be attempted twice.
    stale_after: float = 20.0
    backoff_initial: float = 0.2
    backoff_factor: float = 2.0
    backoff_max: float = 2.0
    max_attempts: int = 30
    workers: int = 16
    seed: int | None = None
    #: Queue prefix and schema name (default: ``smegchaos-<random>``).
    prefix: str = ""
    keep: bool = False
    #: Keep the schema and queues of a run that broke an invariant (the logs are kept anyway).
    keep_failed: bool = False
    quiet: bool = False
    #: The source tree smeg runs from (its cwd and PYTHONPATH): this checkout, or another one.
    smeg_root: Path = ROOT


# --- the provider -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """One POST the provider received, and what it answered."""

    seq: int
    message_id: str
    key: str
    incarnation: str
    status: int
    receipt: str | None
    #: When the provider decided: ``time.monotonic`` (against kill times) and ``time.time``
    #: (against event timestamps: smeg and the script share this host's clock).
    at: float = 0.0
    wall: float | None = None


class ChaosProvider:
    """A local HTTP provider that fails ``fault_rate`` of its calls with 503 and records every call.

    The receipt (``id``) of each accepted call is unique, so a Delivered event says which call it
    recorded; the caller is named by its bearer token (one per ``smeg run`` process, set by the
    script), so a call whose outcome is missing can be traced to a process that was killed.

    HTTP/1.1 with keep-alive on one asyncio loop in a thread of its own: a thread per connection
    (``http.server``) under hundreds of connections from three processes on two cores answered
    late enough for smeg's batch deadline to give up on calls the provider had accepted. A request
    whose body never fully arrives (its sender was killed) is neither recorded nor answered.
    """

    def __init__(self, fault_rate: float, latency: float, seed: int | None = None) -> None:
        self.fault_rate, self.latency = fault_rate, latency
        self.calls: list[Call] = []
        self.lock = threading.Lock()
        self.rng = random.Random(seed)
        self.loop = asyncio.new_event_loop()
        self.server: asyncio.Server | None = None
        ready = threading.Event()
        self.thread = threading.Thread(target=self._serve, args=(ready,), name="chaos-provider", daemon=True)
        self.thread.start()
        if not ready.wait(10) or self.server is None:
            raise ChaosAborted("the chaos provider did not start")
        port = self.server.sockets[0].getsockname()[1]
        self.url: str = f"http://127.0.0.1:{port}/send"
        self.health_url: str = f"http://127.0.0.1:{port}/health"

    def _serve(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(
            asyncio.start_server(self._connection, "127.0.0.1", 0, backlog=4096)
        )
        ready.set()
        self.loop.run_forever()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                request_line, *lines = head.decode("latin-1").split("\r\n")
                method = request_line.split(" ", 1)[0]
                headers = {}
                for line in lines:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
                length = int(headers.get("content-length", "0") or 0)
                body = await reader.readexactly(length) if length else b""
                payload: dict[str, Any]
                if method != "POST":
                    status, payload = 200, {"ok": True}
                else:
                    request = json.loads(body)
                    if not isinstance(request, dict):
                        raise ValueError("not a JSON object")
                    call = self.decide(
                        message_id=str(request.get("message_id", "")),
                        key=headers.get("idempotency-key", ""),
                        incarnation=headers.get("authorization", "").removeprefix("Bearer ").strip(),
                    )
                    if self.latency > 0:
                        await asyncio.sleep(self.latency)
                    status = call.status
                    payload = {"id": call.receipt} if call.receipt else {"error": "chaos: unavailable"}
                data = json.dumps(payload).encode()
                reason = "OK" if status == 200 else "Service Unavailable"
                writer.write(
                    f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(data)}\r\n\r\n".encode()
                    + data
                )
                await writer.drain()
                if headers.get("connection", "").lower() == "close":
                    break
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError):
            pass  # a client killed mid-request is the point of the exercise
        finally:
            writer.close()

    def decide(self, *, message_id: str, key: str, incarnation: str) -> Call:
        """Accept or refuse one call; the decision is recorded before the answer is sent."""
        with self.lock:
            seq = len(self.calls) + 1
            failed = self.rng.random() < self.fault_rate
            call = Call(
                seq=seq,
                message_id=message_id,
                key=key,
                incarnation=incarnation,
                status=503 if failed else 200,
                receipt=None if failed else f"chaos-{seq}",
                at=time.monotonic(),
                wall=time.time(),
            )
            self.calls.append(call)
        return call

    def snapshot(self) -> list[Call]:
        with self.lock:
            return list(self.calls)

    def close(self) -> None:
        server = self.server
        if server is not None:
            self.loop.call_soon_threadsafe(server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def provider_toml(provider: ChaosProvider, timeout: float) -> str:
    """The provider as smeg's configuration names it: an ``http`` provider, keyed per process."""
    return (
        "[providers.chaos]\n"
        'type = "http"\n'
        f'url = "{provider.url}"\n'
        f'health_url = "{provider.health_url}"\n'
        f"timeout = {timeout:g}\n"
        f'token_env = "{INCARNATION_ENV}"\n'
        "[providers.chaos.circuit]\n"  # a chance trip (20 % faults) re-checks within seconds
        "open_for = 2\n"
        "max_open_for = 8\n"
    )


# --- smeg processes -----------------------------------------------------------------------------


@dataclass
class Incarnation:
    """One ``smeg run`` process of a slot; a restart is a new incarnation with a new name."""

    name: str
    slot: int
    process: subprocess.Popen[bytes]
    log_path: Path
    started_wall: float
    killed: bool = False
    killed_at: float | None = None
    exit_code: int | None = None
    #: Its children (pid, start time) when it was killed or stopped: the projector of slot 0.
    children: list[tuple[int, int]] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.process.pid


def proc_stat(pid: int | str) -> list[str]:
    """The fields of ``/proc/PID/stat`` after the command name (state, ppid, …); [] if gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()
    except OSError:
        return []


def children_of(pid: int) -> list[tuple[int, int]]:
    """Live children of ``pid`` as (pid, start time): the start time tells a reused pid apart."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        fields = proc_stat(entry.name)
        if len(fields) > 19 and fields[0] != "Z" and int(fields[1]) == pid:
            found.append((int(entry.name), int(fields[19])))
    return found


def running(pid: int, start: int) -> bool:
    """Whether the process that had this pid and start time still runs (a zombie does not)."""
    fields = proc_stat(pid)
    return len(fields) > 19 and fields[0] != "Z" and int(fields[19]) == start


class Cluster:
    """The slots of ``smeg run`` processes: start, SIGKILL, restart, stop; who ran when."""

    def __init__(self, env: dict[str, str], logs: Path, processes: int, root: Path = ROOT) -> None:
        self.env, self.logs, self.processes, self.root = env, logs, processes, root
        self.current: dict[int, Incarnation] = {}
        self.history: list[Incarnation] = []
        self.generation: Counter[int] = Counter()
        self.kills = 0
        self.restarts = 0
        self.unexpected: list[Incarnation] = []

    def start(self, slot: int) -> Incarnation:
        """Slot 0 keeps smeg's projector child; the others leave the read models to it."""
        self.generation[slot] += 1
        name = f"s{slot}g{self.generation[slot]}"
        env = dict(self.env)
        env[INCARNATION_ENV] = name
        env["SMEG_PROJECTOR"] = "process" if slot == 0 else "external"
        log_path = self.logs / f"{name}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "smeg_actors", "run"],
                cwd=self.root,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        incarnation = Incarnation(name, slot, process, log_path, time.time())
        self.current[slot] = incarnation
        self.history.append(incarnation)
        return incarnation

    def start_all(self) -> None:
        for slot in range(self.processes):
            self.start(slot)

    def kill(self, slot: int) -> Incarnation:
        """SIGKILL the slot's process (not its children: they must notice by themselves), restart it."""
        victim = self.current[slot]
        victim.children = children_of(victim.pid)
        victim.killed = True
        with suppress(ProcessLookupError):
            os.kill(victim.pid, signal.SIGKILL)
        victim.exit_code = victim.process.wait(30)
        victim.killed_at = time.monotonic()
        self.kills += 1
        self.restarts += 1
        return self.start(slot)

    def reap(self) -> list[Incarnation]:
        """Restart processes that exited by themselves (an orchestrator would); return them."""
        exited = []
        for slot, incarnation in list(self.current.items()):
            code = incarnation.process.poll()
            if code is not None and not incarnation.killed:
                incarnation.exit_code = code
                self.unexpected.append(incarnation)
                exited.append(incarnation)
                self.restarts += 1
                self.start(slot)
        return exited

    def wait_ready(self, timeout: float) -> bool:
        """Wait until every current process consumes: a SIGTERM during its boot (before smeg's
        handler is installed) ends it by the signal's default action, which says nothing about
        its graceful stop."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.reap()
            if all(started_at(i) is not None for i in self.current.values()):
                return True
            time.sleep(POLL)
        return False

    def stop_all(self, timeout: float) -> dict[str, int | None]:
        """SIGTERM every current process, wait, then kill what is left; the exit codes by name."""
        for incarnation in self.current.values():
            if incarnation.process.poll() is None:
                incarnation.children = children_of(incarnation.pid)
                with suppress(ProcessLookupError):
                    incarnation.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        codes: dict[str, int | None] = {}
        for incarnation in self.current.values():
            try:
                incarnation.exit_code = incarnation.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                incarnation.exit_code = None
                # smeg logs every thread's stack on SIGUSR1: the log then says where it hangs.
                with suppress(ProcessLookupError):
                    incarnation.process.send_signal(signal.SIGUSR1)
                time.sleep(2.0)
            codes[incarnation.name] = incarnation.exit_code
        self.kill_everything()
        return codes

    def kill_everything(self) -> None:
        """The last resort (and the cleanup on an interrupted run): what we started and is left.

        A process not yet waited for still owns its pid, so its session (ours) can be killed
        whole; a recorded child only if it is the very process recorded (same start time).
        """
        for incarnation in self.history:
            if incarnation.process.poll() is None:
                with suppress(ProcessLookupError, PermissionError):
                    os.killpg(incarnation.pid, signal.SIGKILL)
                with suppress(subprocess.TimeoutExpired):
                    incarnation.process.wait(10)
        for pid in self.orphans():
            with suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)

    def orphans(self, wait: float = 0.0) -> list[int]:
        """Children of killed or stopped processes still running after ``wait`` seconds: smeg's
        projector child stops when its parent is gone (it polls its parent every 0.2 s)."""
        deadline = time.monotonic() + wait
        while True:
            left = [pid for i in self.history for pid, start in i.children if running(pid, start)]
            if not left or time.monotonic() >= deadline:
                return left
            time.sleep(POLL)


# --- RabbitMQ and PostgreSQL --------------------------------------------------------------------


class Publisher(threading.Thread):
    """Publishes the send requests with confirms; ``published`` holds every confirmed message id."""

    def __init__(self, amqp_url: str, queue: str, ids: list[str], rate: float) -> None:
        super().__init__(name="chaos-publisher", daemon=True)
        self.amqp_url, self.queue, self.ids, self.rate = amqp_url, queue, ids, rate
        self.published: list[str] = []
        self.error: str = ""
        self.finished: float | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            connection = pika.BlockingConnection(pika.URLParameters(self.amqp_url))
            channel = connection.channel()
            channel.confirm_delivery()
            channel = wait_for_queue(channel, self.queue, self.stop)
            properties = pika.BasicProperties(delivery_mode=2, content_type="application/json")
            began = time.monotonic()
            for n, message_id in enumerate(self.ids):
                if self.stop.is_set():
                    break
                if self.rate > 0:
                    time.sleep(max(0.0, began + n / self.rate - time.monotonic()))
                channel.basic_publish("", self.queue, request(message_id), properties, mandatory=True)
                self.published.append(message_id)
            connection.close()
        except Exception as exc:
            self.error = one_line(exc)
        finally:
            self.finished = time.monotonic()


def wait_for_queue(channel: Any, queue: str, stop: threading.Event, timeout: float = 120.0) -> Any:
    """Wait until smeg has declared the send queue (with its own arguments, which we leave to it).

    Returns a channel in confirm mode (a failed passive declaration closes the one it was made on).
    """
    deadline = time.monotonic() + timeout
    while not stop.is_set():
        try:
            channel.queue_declare(queue, passive=True)
            return channel
        except pika.exceptions.ChannelClosedByBroker:
            if time.monotonic() > deadline:
                raise ChaosAborted(f"no smeg process declared {queue} within {timeout:g} s") from None
            channel = channel.connection.channel()
            channel.confirm_delivery()
            time.sleep(0.2)
    return channel


def request(message_id: str) -> bytes:
    body = {
        "message_id": message_id,
        "channel": "sms",
        "to": "+447700900123",
        "body": "chaos",
        "correlation_id": f"corr-{message_id}",
    }
    return json.dumps(body).encode()


def queue_depths(amqp_url: str, queues: Iterable[str]) -> dict[str, int | None]:
    """Messages in each queue (ready; with no consumer left, unacked ones are back to ready)."""
    depths: dict[str, int | None] = {}
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        for queue in queues:
            channel = connection.channel()
            try:
                depths[queue] = int(channel.queue_declare(queue, passive=True).method.message_count)
                channel.close()
            except pika.exceptions.ChannelClosedByBroker:
                depths[queue] = None
    finally:
        connection.close()
    return depths


def delete_queues(amqp_url: str, prefix: str) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = connection.channel()
        for queue in ("send", "failed", "rejected"):
            channel.queue_delete(f"{prefix}.{queue}")
        channel.exchange_delete(f"{prefix}.events")
    finally:
        connection.close()


def libpq(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def create_schema(url: str, schema: str) -> None:
    with psycopg.connect(libpq(url), autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))


def drop_schema(url: str, schema: str) -> None:
    with psycopg.connect(libpq(url), autocommit=True, connect_timeout=5) as conn:
        conn.execute("SET lock_timeout = '30s'")
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


class ReadModel:
    """Plain SQL on smeg's ``message_status`` table, in the run's schema."""

    def __init__(self, url: str, schema: str) -> None:
        self.conninfo = libpq(url)
        self.table = sql.Identifier(schema, "message_status")
        self.connection: psycopg.Connection[Any] | None = None

    def _execute(self, query: sql.Composed) -> list[tuple[Any, ...]]:
        if self.connection is None or self.connection.closed:
            self.connection = psycopg.connect(self.conninfo, autocommit=True, connect_timeout=5)
        return self.connection.execute(query).fetchall()

    def final_count(self) -> int:
        """Delivered + Failed messages (0 until the projector has made its table)."""
        query = sql.SQL("SELECT count(*) FROM {} WHERE status IN ({}, {})").format(
            self.table, sql.Literal(DELIVERED), sql.Literal(FAILED)
        )
        try:
            return int(self._execute(query)[0][0])
        except psycopg.Error:
            self.close()
            return 0

    def statuses(self) -> dict[str, str]:
        query = sql.SQL("SELECT message_id, status FROM {}").format(self.table)
        return {str(message_id): str(status) for message_id, status in self._execute(query)}

    def close(self) -> None:
        if self.connection is not None:
            with suppress(psycopg.Error):
                self.connection.close()
            self.connection = None


def export_histories(env: dict[str, str], root: Path) -> dict[str, list[dict[str, Any]]]:
    """Every event in the store, through ``smeg audit export``, grouped by message id, by version."""
    result = subprocess.run(
        [sys.executable, "-m", "smeg_actors", "audit", "export"],
        cwd=root,
        env=env,
        capture_output=True,
        timeout=900,
    )
    if result.returncode != 0:
        raise ChaosAborted(f"smeg audit export exited {result.returncode}: {result.stderr.decode()[-500:]}")
    histories: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for line in result.stdout.splitlines():
        record = json.loads(line)
        histories[record["message_id"]].append(record)
    for records in histories.values():
        records.sort(key=lambda r: r["version"])
    return dict(histories)


# --- the verdict --------------------------------------------------------------------------------


class ChaosAborted(Exception):
    """The run could not be made (a dependency is missing, smeg could not export); not a verdict."""


def when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def history_problem(records: list[dict[str, Any]]) -> str | None:
    """The first way ``records`` (one message's events, by version) break the lifecycle; None if legal."""
    if not records or records[0]["type"] != "Received":
        return "does not begin with Received"
    versions = [r["version"] for r in records]
    if versions != list(range(1, len(records) + 1)):
        return f"versions {versions[:8]} are not 1, 2, 3 …"
    state, attempt, retry_at = RECEIVED, 0, None
    for record in records[1:]:
        kind, version = record["type"], record["version"]
        if state == DELIVERED:
            return f"v{version} {kind} after Delivered"
        if state == FAILED and kind != "RetryRequested":
            return f"v{version} {kind} after Failed"
        if kind == "Attempted":
            if state == IN_FLIGHT:
                return f"v{version} Attempted while attempt {attempt} has no outcome"
            if record["attempt"] != attempt + 1:
                return f"v{version} Attempted #{record['attempt']} after attempt {attempt}"
            if retry_at is not None and when(record["timestamp"]) < retry_at:
                return f"v{version} Attempted at {record['timestamp']} before retry_at {retry_at.isoformat()}"
            state, attempt, retry_at = IN_FLIGHT, attempt + 1, None
        elif kind in ("BackedOff", "Delivered", "Failed"):
            if state != IN_FLIGHT:
                return f"v{version} {kind} without an attempt in flight"
            if record["attempt"] != attempt:
                return f"v{version} {kind} names attempt {record['attempt']}, in flight is {attempt}"
            if kind == "BackedOff":
                state, retry_at = BACKED_OFF, when(record["retry_at"])
                if record["reason"] == INTERRUPTED and record["delay_seconds"] != 0:
                    return f"v{version} interrupted attempt backed off {record['delay_seconds']} s"
            else:
                state = DELIVERED if kind == "Delivered" else FAILED
        elif kind == "RetryRequested":
            if state != FAILED:
                return f"v{version} RetryRequested while {state}"
            state = RECEIVED
        elif kind == "Held":  # waits for its provider, not the clock: it may start at any time
            if state == IN_FLIGHT:
                return f"v{version} Held while attempt {attempt} has no outcome"
            state, retry_at = HELD, None
        else:
            return f"v{version} unexpected {kind}"
    return None


def final_state(records: list[dict[str, Any]]) -> str:
    """The status a history leaves its message in (``RECEIVED`` etc.)."""
    states = {
        "Received": RECEIVED,
        "Attempted": IN_FLIGHT,
        "BackedOff": BACKED_OFF,
        "Delivered": DELIVERED,
        "Failed": FAILED,
        "RetryRequested": RECEIVED,
        "Held": HELD,
    }
    return states.get(records[-1]["type"], "?") if records else "absent"


@dataclass
class ProviderFindings:
    """What the provider's log says against the histories."""

    calls: int = 0
    refused: int = 0
    accepted: int = 0
    key_mismatches: list[str] = field(default_factory=list)
    #: Messages the provider accepted more than once, and the acceptances beyond the first.
    duplicate_messages: int = 0
    duplicate_deliveries: int = 0
    duplicates_with_same_key: bool = True
    #: Accepted calls whose answer is not in the history, by cause: the calling process was
    #: killed, or it gave up waiting (a transport failure or timeout recorded as a backoff).
    unrecorded_by_kills: int = 0
    unrecorded_by_timeouts: int = 0
    #: For each acceptance lost with a killed process: seconds from the acceptance to the kill.
    kill_gaps: list[float] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def no_answer(record: dict[str, Any]) -> bool:
    """A recorded attempt outcome that is not the provider's answer: a timeout or transport failure."""
    return (
        record["type"] in ("BackedOff", "Failed")
        and record.get("status_code") is None
        and record.get("reason") != INTERRUPTED
    )


def attempt_began(records: list[dict[str, Any]], attempt: int) -> datetime | None:
    """When attempt number ``attempt`` of a history began (its Attempted event's timestamp)."""
    for record in records:
        if record["type"] == "Attempted" and record["attempt"] == attempt:
            return when(record["timestamp"])
    return None


def check_provider(
    calls: list[Call],
    histories: dict[str, list[dict[str, Any]]],
    killed: Collection[str],
    kill_times: dict[str, float] | None = None,
) -> ProviderFindings:
    """Every provider call accounted for: its answer recorded in the history, or never seen.

    Each call belongs to one Attempted event, so a message has at most as many calls as attempts.
    An answer may be missing from the history only for an attempt closed as interrupted (its
    process died: the call must come from a process the script killed) or one recorded as a
    timeout or transport failure (the process gave up waiting); a live process that saw the answer
    records it. A Delivered event names a receipt the provider gave for that very message, after
    the attempt it records began.
    """
    found = ProviderFindings(calls=len(calls))
    by_message: dict[str, list[Call]] = defaultdict(list)
    for call in calls:
        by_message[call.message_id].append(call)
        if call.key != call.message_id:
            found.key_mismatches.append(f"{call.message_id!r} sent with Idempotency-Key {call.key!r}")
    found.refused = sum(1 for c in calls if c.status != 200)
    found.accepted = len(calls) - found.refused
    for message_id, made in sorted(by_message.items()):
        records = histories.get(message_id, [])
        attempts = sum(1 for r in records if r["type"] == "Attempted")
        interrupted = sum(1 for r in records if r["type"] == "BackedOff" and r["reason"] == INTERRUPTED)
        gave_up = sum(1 for r in records if no_answer(r))
        refusals_seen = sum(
            1 for r in records if r["type"] in ("BackedOff", "Failed") and r.get("status_code")
        )
        receipts = [r["provider_message_id"] for r in records if r["type"] == "Delivered"]
        accepted = [c for c in made if c.status == 200]
        refused = [c for c in made if c.status != 200]
        if len(made) > attempts:
            found.problems.append(f"{message_id}: {len(made)} provider calls, {attempts} Attempted")
        given = {c.receipt: c for c in accepted}
        for delivered in (r for r in records if r["type"] == "Delivered"):
            receipt = delivered["provider_message_id"]
            if receipt not in given:
                found.problems.append(f"{message_id}: Delivered as {receipt}, which the provider never gave")
                continue
            began = attempt_began(records, delivered["attempt"])
            wall = given[receipt].wall
            if began is not None and wall is not None and wall < began.timestamp():
                found.problems.append(
                    f"{message_id}: Delivered for attempt {delivered['attempt']} with receipt {receipt},"
                    f" which the provider gave {began.timestamp() - wall:.2f} s before that attempt began"
                )
        if len(accepted) > 1:
            found.duplicate_messages += 1
            found.duplicate_deliveries += len(accepted) - 1
            if any(c.key != message_id for c in accepted):
                found.duplicates_with_same_key = False
        unseen = [c for c in accepted if c.receipt not in receipts]
        by_kill = sum(1 for c in unseen if c.incarnation in killed)
        found.kill_gaps += [
            kill_times[c.incarnation] - c.at for c in unseen if kill_times and c.incarnation in kill_times
        ]
        found.unrecorded_by_kills += by_kill
        found.unrecorded_by_timeouts += len(unseen) - by_kill
        # Refusals carry no receipt: count how many cannot have come from killed processes.
        refusals_unseen = max(0, len(refused) - refusals_seen)
        refusals_unseen_live = max(0, refusals_unseen - sum(1 for c in refused if c.incarnation in killed))
        if len(unseen) + refusals_unseen > interrupted + gave_up:
            found.problems.append(
                f"{message_id}: {len(unseen) + refusals_unseen} answers missing from the history,"
                f" {interrupted} attempts interrupted and {gave_up} timed out"
            )
        if len(unseen) - by_kill + refusals_unseen_live > gave_up:
            live = ", ".join(
                f"#{c.seq} by {c.incarnation or '?'}" for c in unseen if c.incarnation not in killed
            )
            found.problems.append(
                f"{message_id}: answers to live processes missing from the history"
                f" ({live or f'{refusals_unseen_live} refusals'}), {gave_up} attempts timed out"
            )
    return found


@dataclass
class ChaosReport:
    """Figures and verdict of one run; ``violations`` empty means every invariant held."""

    config: ChaosConfig
    prefix: str = ""
    published: int = 0
    kills: int = 0
    restarts: int = 0
    unexpected_exits: list[str] = field(default_factory=list)
    stop_codes: dict[str, int | None] = field(default_factory=dict)
    orphans: list[int] = field(default_factory=list)
    children_seen: int = 0
    wall_seconds: float = 0.0
    delivery_seconds: float | None = None
    drain_seconds: float = 0.0
    delivered: int = 0
    failed: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    stuck: list[str] = field(default_factory=list)
    invalid: dict[str, str] = field(default_factory=dict)
    unknown: list[str] = field(default_factory=list)
    read_model_mismatches: list[str] = field(default_factory=list)
    queues: dict[str, int | None] = field(default_factory=dict)
    attempts: int = 0
    interrupted: int = 0
    backoff_reasons: Counter[str] = field(default_factory=Counter)
    provider: ProviderFindings = field(default_factory=ProviderFindings)
    ready_seconds: list[float] = field(default_factory=list)
    logs: Path | None = None
    violations: list[str] = field(default_factory=list)

    @property
    def throughput(self) -> float | None:
        if not self.delivery_seconds:
            return None
        return self.published / self.delivery_seconds


def judge(report: ChaosReport) -> list[str]:
    """Every invariant the run broke, one line each (empty: the proof holds)."""
    out = []

    def sample(items: Iterable[str]) -> str:
        listed = list(items)
        return ", ".join(listed[:5]) + (" …" if len(listed) > 5 else "")

    if report.published < report.config.messages:
        out.append(f"only {report.published} of {report.config.messages} requests were published")
    if report.lost:
        out.append(f"{len(report.lost)} lost (no event at all): {sample(report.lost)}")
    if report.stuck:
        out.append(f"{len(report.stuck)} stuck (not final after the drain): {sample(report.stuck)}")
    if report.failed:
        out.append(f"{len(report.failed)} Failed although every fault was transient: {sample(report.failed)}")
    if report.invalid:
        out.append(
            f"{len(report.invalid)} invalid histories: "
            + sample(f"{k}: {v}" for k, v in sorted(report.invalid.items()))
        )
    if report.unknown:
        out.append(f"{len(report.unknown)} messages in the store that were never published")
    if report.read_model_mismatches:
        out.append(
            f"{len(report.read_model_mismatches)} read-model rows disagree with the store: "
            + sample(report.read_model_mismatches)
        )
    for queue, depth in report.queues.items():
        if depth:
            out.append(f"{depth} messages left in {queue}")
    if report.provider.key_mismatches:
        out.append(
            f"{len(report.provider.key_mismatches)} calls with a foreign Idempotency-Key: "
            + sample(report.provider.key_mismatches)
        )
    if report.provider.problems:
        out.append(f"{len(report.provider.problems)} provider findings: {sample(report.provider.problems)}")
    if report.unexpected_exits:
        out.append(f"processes exited by themselves: {', '.join(report.unexpected_exits)}")
    unclean = {name: code for name, code in report.stop_codes.items() if code != 0}
    if unclean:
        out.append(f"processes that did not stop cleanly on SIGTERM (exit codes): {unclean}")
    if report.orphans:
        out.append(f"children of killed or stopped processes still running: {report.orphans}")
    return out


def examine(
    report: ChaosReport,
    published: list[str],
    histories: dict[str, list[dict[str, Any]]],
    statuses: dict[str, str] | None,
    calls: list[Call],
    killed: Collection[str],
    kill_times: dict[str, float] | None = None,
) -> None:
    """Fill the report's verdict from the store's histories, the read model and the provider's log.

    ``killed`` names the processes the script SIGKILLed; ``kill_times`` says when (monotonic).
    """
    wanted = set(published)
    report.published = len(published)
    report.unknown = sorted(set(histories) - wanted)
    for message_id in published:
        records = histories.get(message_id)
        if not records:
            report.lost.append(message_id)
            continue
        problem = history_problem(records)
        if problem is not None:
            report.invalid[message_id] = problem
        state = final_state(records)
        if state == DELIVERED:
            report.delivered += 1
        elif state == FAILED:
            report.failed.append(message_id)
        else:
            report.stuck.append(message_id)
        if statuses is not None and statuses.get(message_id) != state:
            report.read_model_mismatches.append(
                f"{message_id}: read model {statuses.get(message_id)}, store {state}"
            )
        for record in records:
            if record["type"] == "Attempted":
                report.attempts += 1
            elif record["type"] == "BackedOff":
                report.backoff_reasons[record["reason"]] += 1
    report.interrupted = report.backoff_reasons[INTERRUPTED]
    report.provider = check_provider(calls, histories, killed, kill_times)
    report.violations += judge(report)


# --- the run ------------------------------------------------------------------------------------


def smeg_env(config: ChaosConfig, prefix: str, schema: str, config_file: Path) -> dict[str, str]:
    """The environment of every ``smeg`` process: the caller's, without its SMEG_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMEG_")}
    env.update(
        PYTHONPATH=str(config.smeg_root),
        SMEG_DATABASE_URL=config.database_url,
        SMEG_DATABASE_SCHEMA=schema,
        SMEG_AMQP_URL=config.amqp_url,
        SMEG_QUEUE_PREFIX=prefix,
        SMEG_CONFIG=str(config_file),
        SMEG_LOG_FORMAT="json",
        SMEG_LOG_LEVEL="info",
        SMEG_HTTP_PORT="0",  # several independent processes on one host: no ops port each
        SMEG_WORKERS=str(config.workers),
        SMEG_BACKOFF_INITIAL=str(config.backoff_initial),
        SMEG_BACKOFF_FACTOR=str(config.backoff_factor),
        SMEG_BACKOFF_MAX=str(config.backoff_max),
        SMEG_MAX_ATTEMPTS=str(config.max_attempts),
        SMEG_STALE_AFTER=str(config.stale_after),
        SMEG_SHUTDOWN_TIMEOUT="15",
    )
    return env


def say(config: ChaosConfig, text: str) -> None:
    if not config.quiet:
        print(text, flush=True)


def started_at(incarnation: Incarnation) -> float | None:
    """When the process logged ``runtime_started`` (it consumes from then on), as a unix time."""
    with suppress(OSError, ValueError, KeyError), incarnation.log_path.open(errors="replace") as log:
        for line in log:
            if '"runtime_started"' in line and line.startswith("{"):
                return when(json.loads(line)["timestamp"]).timestamp()
    return None


def ready_times(incarnations: Iterable[Incarnation]) -> list[float]:
    """Seconds from each start to consuming, for the processes that got there."""
    times = []
    for incarnation in incarnations:
        at = started_at(incarnation)
        if at is not None:
            times.append(at - incarnation.started_wall)
    return times


def run_chaos(config: ChaosConfig, *, workdir: Path | None = None) -> ChaosReport:
    """One whole run: set up, deliver under kills, drain, stop, examine, clean up. See the module doc."""
    if config.processes < 1 or config.messages < 1 or config.kill_every <= 0:
        raise ChaosAborted("--processes, --messages and --kill-every must be positive")
    if not 0 <= config.fault_rate < 1:
        raise ChaosAborted("--fault-rate must be in [0, 1)")
    rng = random.Random(config.seed)
    prefix = config.prefix or f"smegchaos-{uuid.uuid4().hex[:10]}"
    schema = prefix.replace("-", "_")
    report = ChaosReport(config=config, prefix=prefix)
    began = time.monotonic()
    logs = workdir or Path(tempfile.mkdtemp(prefix="smeg-chaos-"))
    report.logs = logs
    with ExitStack() as stack:
        try:
            create_schema(config.database_url, schema)
        except psycopg.Error as exc:
            raise ChaosAborted(f"PostgreSQL: {one_line(exc)}") from exc

        def clean_up() -> None:
            if config.keep or (report.violations and config.keep_failed):
                say(config, f"  kept for inspection: schema {schema}, queues {prefix}.*")
                return
            guarded(f"dropping schema {schema}", lambda: drop_schema(config.database_url, schema))()
            guarded(f"deleting queues {prefix}.*", lambda: delete_queues(config.amqp_url, prefix))()

        stack.callback(clean_up)
        provider = ChaosProvider(config.fault_rate, config.provider_latency, seed=rng.randrange(2**32))
        stack.callback(provider.close)
        config_file = logs / "smeg.toml"
        config_file.write_text(provider_toml(provider, config.provider_timeout))
        env = smeg_env(config, prefix, schema, config_file)
        read_model = ReadModel(config.database_url, schema)
        stack.callback(read_model.close)

        ids = [f"{prefix}-{i:06d}" for i in range(config.messages)]
        publisher = Publisher(config.amqp_url, f"{prefix}.send", ids, config.publish_rate)
        stack.callback(publisher.stop.set)
        cluster = Cluster(env, logs, config.processes, config.smeg_root)
        stack.callback(cluster.kill_everything)
        say(
            config,
            f"chaos {prefix}: {config.messages:,} messages, {config.processes} processes,"
            f" SIGKILL every {config.kill_every:g} s, {config.fault_rate:.0%} provider faults;"
            f" logs in {logs}",
        )
        cluster.start_all()
        publisher.start()
        started = time.monotonic()

        # Chaos: a random slot SIGKILLed and restarted every kill_every seconds until all are final.
        victims = shuffled_rounds(config.processes, rng)
        next_kill = started + config.kill_every
        next_progress = started + PROGRESS_EVERY
        deadline = started + config.chaos_timeout
        done, progress = 0, (0, started)
        while True:
            now = time.monotonic()
            for exited in cluster.reap():
                say(config, f"  ! {exited.name} exited by itself with {exited.exit_code}; restarted")
            if publisher.error:
                raise ChaosAborted(f"publishing failed: {publisher.error}")
            done = read_model.final_count()
            if done != progress[0]:
                progress = (done, now)
            if publisher.finished is not None and done >= len(publisher.published):
                if report.delivery_seconds is None:
                    report.delivery_seconds = now - started
                if not config.max_kills:
                    break
            if now >= deadline:
                say(config, f"  chaos timeout after {config.chaos_timeout:g} s at {done} final")
                break
            if publisher.finished is not None and now - progress[1] > config.drain:
                # Nothing has become final for a whole drain: what is left will not be, kills or not.
                say(config, f"  no progress for {config.drain:g} s at {done} final: no more kills")
                break
            if config.max_kills and cluster.kills >= config.max_kills:
                say(config, f"  {cluster.kills} kills made: no more kills")
                break
            if now >= next_kill:
                slot = next(victims)
                victim = cluster.current[slot]
                fresh = cluster.kill(slot)
                say(
                    config,
                    f"  {now - started:6.1f} s  SIGKILL {victim.name} (pid {victim.pid}) → {fresh.name}",
                )
                next_kill += config.kill_every
            if now >= next_progress:
                say(
                    config,
                    f"  {now - started:6.1f} s  {len(publisher.published):,} published,"
                    f" {done:,} final, {len(provider.calls):,} provider calls, {cluster.kills} kills",
                )
                next_progress += PROGRESS_EVERY
            time.sleep(POLL)

        # Drain: no more kills; every message must become final within the bound.
        drain_start = time.monotonic()
        while report.delivery_seconds is None and time.monotonic() - drain_start < config.drain:
            for exited in cluster.reap():
                say(config, f"  ! {exited.name} exited by itself with {exited.exit_code}; restarted")
            done = read_model.final_count()
            if publisher.finished is not None and done >= len(publisher.published):
                report.delivery_seconds = time.monotonic() - started
            time.sleep(POLL)
        report.drain_seconds = time.monotonic() - drain_start
        say(config, f"  {done:,} of {len(publisher.published):,} final; stopping (SIGTERM) …")
        publisher.stop.set()
        publisher.join(30)
        if publisher.error:
            raise ChaosAborted(f"publishing failed: {publisher.error}")
        if not cluster.wait_ready(timeout=60):
            say(config, "  not every process consumes after 60 s: stopping them anyway")
        report.stop_codes = cluster.stop_all(timeout=40)
        report.kills, report.restarts = cluster.kills, cluster.restarts
        report.unexpected_exits = [f"{i.name} exit {i.exit_code}" for i in cluster.unexpected]
        report.published = len(publisher.published)
        report.ready_seconds = ready_times(cluster.history)
        report.orphans = cluster.orphans(wait=15.0)
        report.children_seen = sum(len(i.children) for i in cluster.history)

        say(config, "  examining: smeg audit export, read model, queues, provider log …")
        histories = export_histories({**env, "SMEG_LOG_LEVEL": "warning"}, config.smeg_root)
        try:
            statuses: dict[str, str] | None = read_model.statuses()
        except psycopg.Error as exc:
            statuses = None
            report.violations.append(f"read model unreadable: {one_line(exc)}")
        report.queues = queue_depths(
            config.amqp_url, (f"{prefix}.{q}" for q in ("send", "rejected", "failed"))
        )
        kill_times = {i.name: i.killed_at for i in cluster.history if i.killed_at is not None}
        calls = provider.snapshot()
        examine(report, publisher.published, histories, statuses, calls, set(kill_times), kill_times)
        report.wall_seconds = time.monotonic() - began
        if report.violations or config.keep:
            with (logs / "provider-calls.jsonl").open("w") as out:
                out.writelines(json.dumps(vars(call)) + "\n" for call in calls)
    if not report.violations and workdir is None and not config.keep:
        shutil.rmtree(logs, ignore_errors=True)
        report.logs = None
    return report


def shuffled_rounds(processes: int, rng: random.Random) -> Iterator[int]:
    """Slots in random order, each once per round: random victims, and none spared by chance."""
    while True:
        slots = list(range(processes))
        rng.shuffle(slots)
        yield from slots


def guarded(what: str, action: Callable[[], Any]) -> Callable[[], None]:
    """A cleanup step that reports its failure instead of hiding the run's own outcome."""

    def run() -> None:
        try:
            action()
        except Exception as exc:
            print(f"  cleanup: {what} failed: {one_line(exc)}", file=sys.stderr, flush=True)

    return run


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


# --- output -------------------------------------------------------------------------------------


def figures(report: ChaosReport) -> list[tuple[str, str]]:
    """The report as (label, value) rows, in the order the issue lists them."""
    p = report.provider
    gaps = p.kill_gaps
    ready = report.ready_seconds
    rate = report.throughput
    return [
        ("messages published", f"{report.published:,}"),
        ("processes", f"{report.config.processes} (slot 0 keeps the projector)"),
        ("kills (SIGKILL)", f"{report.kills}"),
        ("restarts", f"{report.restarts}"),
        (
            "start to consuming",
            f"median {statistics.median(ready):.1f} s, max {max(ready):.1f} s" if ready else "-",
        ),
        ("wall time", f"{report.wall_seconds:.1f} s"),
        (
            "publish to all final",
            f"{report.delivery_seconds:.1f} s" if report.delivery_seconds is not None else "not reached",
        ),
        ("throughput", f"{rate:,.0f} msgs/s (under kills)" if rate else "-"),
        ("provider calls", f"{p.calls:,} ({p.refused:,} answered 503, {p.accepted:,} accepted)"),
        ("attempts (Attempted)", f"{report.attempts:,}"),
        (
            "backoffs by reason",
            ", ".join(f"{k}: {v:,}" for k, v in report.backoff_reasons.most_common()) or "-",
        ),
        (
            "duplicate deliveries",
            f"{p.duplicate_deliveries} extra acceptances of {p.duplicate_messages} messages,"
            f" all with the message's own Idempotency-Key: {'yes' if p.duplicates_with_same_key else 'NO'}",
        ),
        (
            "acceptances not recorded",
            f"{p.unrecorded_by_kills} by killed processes (mid-call),"
            f" {p.unrecorded_by_timeouts} answered after the caller gave up (timeout)",
        ),
        (
            "acceptance to kill",
            f"median {statistics.median(gaps):.2f} s, max {max(gaps):.2f} s"
            " (how long before its process was killed a lost acceptance was made)"
            if gaps
            else "-",
        ),
        ("delivered", f"{report.delivered:,}"),
        ("failed", f"{len(report.failed)}"),
        ("lost", f"{len(report.lost)}"),
        ("stuck", f"{len(report.stuck)}"),
        ("invalid histories", f"{len(report.invalid)}"),
        ("read model mismatches", f"{len(report.read_model_mismatches)}"),
        ("queues left", ", ".join(f"{q.rsplit('.', 1)[1]} {d}" for q, d in report.queues.items()) or "-"),
        (
            "orphaned children",
            f"{len(report.orphans)} still running, of {report.children_seen} projector children"
            " of killed or stopped processes",
        ),
        ("unexpected exits", f"{len(report.unexpected_exits)}"),
        ("SIGTERM exit codes", " ".join(f"{k}={v}" for k, v in report.stop_codes.items()) or "-"),
    ]


def describe(report: ChaosReport) -> str:
    width = max(len(label) for label, _ in figures(report))
    lines = [f"{label:<{width}}  {value}" for label, value in figures(report)]
    if report.violations:
        lines.append("VIOLATIONS:")
        lines += [f"  - {v}" for v in report.violations]
        if report.logs is not None:
            lines.append(f"logs of every process: {report.logs}")
    else:
        lines.append(
            "every invariant held: 0 lost, 0 stuck, every history valid, a provider answer missing"
            " from a history only where its caller was killed or had given up waiting"
        )
    return "\n".join(lines)


def log_tails(report: ChaosReport) -> Iterator[str]:
    """The end of each process's log, for a failed run."""
    if report.logs is None:
        return
    for path in sorted(report.logs.glob("*.log")):
        lines = path.read_text(errors="replace").splitlines()[-LOG_TAIL:]
        yield f"--- {path.name} ---"
        yield from lines


# --- main ---------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> ChaosConfig:
    defaults = ChaosConfig()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--messages", type=int, default=defaults.messages, help="send requests (20000)")
    parser.add_argument("--processes", type=int, default=defaults.processes, help="smeg run processes (3)")
    parser.add_argument(
        "--kill-every", type=float, default=defaults.kill_every, help="seconds between kills (5)"
    )
    parser.add_argument("--fault-rate", type=float, default=defaults.fault_rate, help="share of 503s (0.2)")
    parser.add_argument("--database-url", default=defaults.database_url, help="PostgreSQL (SQLAlchemy URL)")
    parser.add_argument("--amqp-url", default=defaults.amqp_url, help="RabbitMQ")
    parser.add_argument(
        "--publish-rate", type=float, default=0.0, help="requests per second (default: as fast as confirmed)"
    )
    parser.add_argument(
        "--provider-latency", type=float, default=defaults.provider_latency, help="seconds per call (0.02)"
    )
    parser.add_argument("--drain", type=float, default=defaults.drain, help="longest drain, seconds (120)")
    parser.add_argument(
        "--chaos-timeout", type=float, default=defaults.chaos_timeout, help="longest killing phase (900)"
    )
    parser.add_argument(
        "--max-kills", type=int, default=0, help="make this many kills, then drain (0: until all final)"
    )
    parser.add_argument(
        "--stale-after", type=float, default=defaults.stale_after, help="SMEG_STALE_AFTER, seconds (20)"
    )
    parser.add_argument("--seed", type=int, default=None, help="victims and faults reproducible")
    parser.add_argument("--keep", action="store_true", help="keep the schema, queues and logs")
    parser.add_argument(
        "--smeg-root", type=Path, default=ROOT, help="run smeg from this source tree (default: this one)"
    )
    args = parser.parse_args(argv)
    return ChaosConfig(
        messages=args.messages,
        processes=args.processes,
        kill_every=args.kill_every,
        fault_rate=args.fault_rate,
        database_url=args.database_url,
        amqp_url=args.amqp_url,
        publish_rate=args.publish_rate,
        provider_latency=args.provider_latency,
        drain=args.drain,
        chaos_timeout=args.chaos_timeout,
        max_kills=args.max_kills,
        stale_after=args.stale_after,
        seed=args.seed,
        keep=args.keep,
        keep_failed=True,
        smeg_root=args.smeg_root.resolve(),
    )


def interrupted(signum: int, _frame: Any) -> None:
    """SIGTERM as Ctrl-C: unwind, so the smeg processes, schema and queues are cleaned up."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print(f"\n{signal.Signals(signum).name}: stopping, cleaning up …", file=sys.stderr, flush=True)
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, interrupted)
    try:
        report = run_chaos(config)
    except (ChaosAborted, OSError, psycopg.Error, pika.exceptions.AMQPError) as exc:
        print(f"chaos: could not run: {one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    print()
    print(describe(report))
    if report.violations:
        print()
        for line in log_tails(report):
            print(line[:400])
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
