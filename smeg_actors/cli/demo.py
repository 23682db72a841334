"""``smeg demo``: the whole pipeline in one process on embedded defaults, in under a minute.

SQLite store, the in-memory broker (same ports as RabbitMQ), a simulated provider with
transient and permanent failures and an outage, the backoff scaled down to seconds. After the
outage the exhausted failures are redriven, as ``smeg redrive`` would do against RabbitMQ.
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any, cast

import click
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from adapters.memory_broker import MemoryFailurePublisher, MemoryIntake
from adapters.status_view import message_status, status_counts
from domain.message import FAILED, Message
from domain.ports import MessageRepository
from smeg_actors.actors.messages import DeliverMessages, WorkItem
from smeg_actors.cli.support import end_progress, progress
from smeg_actors.runtime.bootstrap import build_runtime, memory_broker
from smeg_actors.runtime.clock import utc_now
from smeg_actors.runtime.config import Settings
from smeg_actors.runtime.factory import build_providers, open_store
from smeg_actors.runtime.logs import configure_logging
from smeg_actors.runtime.pipeline import Runtime

DEMO_BACKOFF: dict[str, Any] = {
    "backoff_initial": 0.5,
    "backoff_factor": 3.0,
    "backoff_max": 5.0,
    "max_attempts": 3,
}
OUTAGE_ENDS_S = 4.5
SIMULATED = {
    "type": "simulated",
    "latency_ms": 20,
    "transient_rate": 0.15,
    "permanent_rate": 0.02,
    "outages": [[1.0, 4.0]],
    "seed": 7,
    # The breaker scaled down like the backoff: open for 0.5 s (at most 2 s), not 30 s (600 s),
    # or the outage's held messages outlast the demo.
    "circuit": {"window": 5.0, "open_for": 0.5, "max_open_for": 2.0},
}


def run_demo(database: Path, messages: int, deadline_s: float = 50.0) -> int:
    """Run the demo; return 0 when every message ended Delivered or Failed in time."""
    url = f"sqlite:///{database}"
    settings = Settings(
        database_url=url,
        workers=8,
        log_level="warning",
        projector="inline",
        providers={"sim": SIMULATED},
        **DEMO_BACKOFF,
    )
    read_models = make_url(settings.read_models_database_url).database or ""
    for path in (str(database), read_models):
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
    broker = memory_broker(known_providers={"sim"})
    store = open_store(settings)
    runtime = build_runtime(settings, store=store, providers=build_providers(settings, {}), broker=broker)
    intake, publisher = cast(MemoryIntake, broker.intake), cast(MemoryFailurePublisher, broker.publisher)
    configure_logging(fmt="console", level="critical")  # its failures are simulated and in the table
    started, began = time.monotonic(), utc_now()
    runtime.start()
    ids = _publish(intake, messages, over_s=3.0)
    redriven = 0
    try:
        _wait(runtime, messages, started, deadline_s / 2)  # the outage and its retries settle
        time.sleep(max(0.0, started + OUTAGE_ENDS_S - time.monotonic()))
        redriven = _redrive_exhausted(runtime, store)
        finished = _wait(runtime, messages, started, deadline_s) is True
    finally:
        end_progress()
        runtime.stop(timeout=5)
    _report(runtime, intake, publisher, redriven, time.monotonic() - started)
    _show_history(runtime, ids)
    _chart(runtime, database.with_name(f"{database.stem}-report.png"), began)
    store.close()
    return 0 if finished else 1


def _publish(intake: MemoryIntake, count: int, over_s: float) -> list[str]:
    ids = []
    pace = over_s / count
    for i in range(count):
        time.sleep(pace)
        message_id = f"demo-{i:05d}"
        ids.append(message_id)
        body = {
            "message_id": message_id,
            "channel": "sms" if i % 4 else "im",
            "to": f"+4477009{i:05d}" if i % 4 else f"user{i}@chat.example",
            "body": f"Your code is {uuid.uuid4().hex[:6]}",
            "provider": "sim",
        }
        intake.publish(json.dumps(body).encode())
    intake.publish(b"{not json")
    intake.publish(json.dumps({"channel": "fax", "to": "x", "body": "y"}).encode())
    return ids


def _wait(runtime: Runtime, total: int, started: float, limit: float) -> bool | None:
    while time.monotonic() - started < limit:
        counts = status_counts(runtime.engine)
        done = counts.get("delivered", 0) + counts.get("failed", 0)
        progress(
            f"{time.monotonic() - started:5.1f}s  delivered {counts.get('delivered', 0):4}"
            f"  backed off {counts.get('backed_off', 0):4}  in flight {counts.get('in_flight', 0):4}"
            f"  failed {counts.get('failed', 0):4}  of {total}"
        )
        if done >= total and runtime.idle():
            return True
        time.sleep(0.25)
    return None


def _redrive_exhausted(runtime: Runtime, store: MessageRepository) -> int:
    query = select(message_status.c.id).where(
        message_status.c.status == FAILED, message_status.c.permanent.is_(False)
    )
    with runtime.engine.connect() as connection:
        ids = [row.id for row in connection.execute(query)]
    items = []
    for aggregate_id in ids:
        outcome = store.update(aggregate_id, lambda m: m.request_retry("demo-redrive", now=utc_now()))
        if outcome.message is not None:
            items.append(WorkItem(aggregate_id))
    runtime.children.tell("dispatcher", DeliverMessages(tuple(items)))
    return len(items)


def _report(
    runtime: Runtime,
    intake: MemoryIntake,
    publisher: MemoryFailurePublisher,
    redriven: int,
    elapsed: float,
) -> None:
    runtime.parts.read_models.catch_up()
    counts = status_counts(runtime.engine)
    with runtime.engine.connect() as connection:
        retried = connection.scalar(
            select(func.count()).select_from(message_status).where(message_status.c.attempts > 1)
        )
        permanent = connection.scalar(
            select(func.count()).select_from(message_status).where(message_status.c.permanent.is_(True))
        )
    rows = [
        ("delivered", counts.get("delivered", 0)),
        ("retried (more than one attempt)", retried or 0),
        ("failed, permanent", permanent or 0),
        ("failed, retries exhausted", counts.get("failed", 0) - (permanent or 0)),
        ("redriven after the outage", redriven),
        ("published to the failed queue", len(publisher.failed)),
        ("rejected payloads", len(intake.rejected)),
    ]
    click.echo(f"\nsmeg demo finished in {elapsed:.1f}s\n")
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        click.echo(f"  {name:<{width}}  {value:>6}")


def _show_history(runtime: Runtime, ids: list[str]) -> None:
    query = select(message_status.c.message_id).order_by(message_status.c.attempts.desc()).limit(1)
    with runtime.engine.connect() as connection:
        message_id = connection.scalar(query) or ids[0]
    click.echo(f"\n$ smeg history {message_id}")
    store = runtime.store
    message = store.get(Message.create_id(message_id))
    from domain.audit import describe, event_record

    click.echo(f"message {message_id} ({message.status}, {message.attempts} attempts)")
    for event in store.history(message.id):
        click.echo(describe(event_record(event)))
    sys.stdout.flush()


def _chart(runtime: Runtime, path: Path, began: datetime) -> None:
    """Draw the report chart of the run (its own minutes: the finest bins the read models keep),
    when matplotlib (the ``chart`` extra) is installed."""
    from smeg_actors.cli.report import ChartUnavailableError, draw_chart

    try:
        draw_chart(runtime.engine, began, utc_now(), None, path)
    except ChartUnavailableError as exc:
        click.echo(f"\n(no chart: {exc})")
        return
    click.echo(f"\nreport chart: {path}  (smeg report --chart PATH draws it for any window)")
