"""The read-model commands: ``audit replay``, ``report`` and ``projections status|run|rebuild``."""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from smeg_actors.cli.support import (
    CommandError,
    end_progress,
    open_store,
    parse_time,
    progress,
    settings_of,
)
from smeg_actors.runtime.exit_codes import EXIT_CONFIG, EXIT_OK

if TYPE_CHECKING:
    from adapters.event_store import MessageStore
    from adapters.parked_events import ParkedEvent
    from smeg_actors.runtime.config import Settings
    from smeg_actors.runtime.readiness import Pulse, Readiness


@click.command("replay")
@click.argument("message_id")
@click.option("--at", "at", required=True, help="ISO 8601: show the state as it was then.")
@click.option("--json", "as_json", is_flag=True, help="JSON object.")
@click.pass_context
def audit_replay(ctx: click.Context, message_id: str, at: str, as_json: bool) -> None:
    """Replay a message's events up to a moment and show its state then."""
    from adapters.event_store import MessageNotFoundError
    from domain.request import mask_address

    moment = parse_time(at, "--at")
    assert moment is not None
    store = open_store(settings_of(ctx))
    try:
        current = store.get_by_message_id(message_id)
        events = [e for e in store.history(current.id) if e.timestamp <= moment]
        if not events:
            raise CommandError(f"message {message_id} did not exist yet at {moment.isoformat()}")
        state = store.get_at_version(current.id, events[-1].originator_version)
    except MessageNotFoundError:
        raise CommandError(f"unknown message id: {message_id}") from None
    finally:
        store.close()
    record = {
        "message_id": message_id,
        "at": moment.isoformat(),
        "version": state.version,
        "last_event": type(events[-1]).__name__,
        "status": state.status,
        "attempts": state.attempts,
        "cycle_attempts": state.cycle_attempts,
        "retry_at": state.retry_at.isoformat() if state.retry_at else None,
        "last_provider": state.last_provider,
        "last_error": state.last_error,
        "permanent": state.permanent,
        "provider_message_id": state.provider_message_id,
        "channel": state.channel,
        "to": state.to,
        "correlation_id": state.correlation_id,
    }
    if as_json:
        click.echo(json.dumps(record, indent=2))
        return
    record["to"] = mask_address(state.to)
    for key, value in record.items():
        click.echo(f"{key:<20} {value}")


@click.command()
@click.option("--since", default=None, help="ISO 8601 (default: 24 h before --until).")
@click.option("--until", default=None, help="ISO 8601 (default: now).")
@click.option("--provider", default=None, help="Only this provider.")
@click.option(
    "--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table", show_default=True
)
@click.option("--chart", "chart", default=None, help="Also draw a PNG chart to this path.")
@click.pass_context
def report(
    ctx: click.Context,
    since: str | None,
    until: str | None,
    provider: str | None,
    fmt: str,
    chart: str | None,
) -> None:
    """Delivery totals, rates, latency percentiles and top failure reasons, from the read models."""
    from datetime import timedelta

    from smeg_actors.cli.report import ChartUnavailableError, build_report, draw_chart, render

    end = parse_time(until, "--until") or datetime.now(timezone.utc)
    start = parse_time(since, "--since") or end - timedelta(hours=24)
    if chart:
        _check_chart_folder(chart)
    store, engine = _store_and_engine(settings_of(ctx))
    try:
        for runner in runners_ready(store, engine):
            runner.catch_up()
        click.echo(render(build_report(engine, start, end, provider), fmt))
        if chart:
            try:
                path = draw_chart(engine, start, end, provider, chart)
            except ChartUnavailableError as exc:
                raise CommandError(str(exc), EXIT_CONFIG) from None
            except OSError as exc:  # e.g. a folder that may not be written to
                raise CommandError(
                    f"--chart: cannot write {chart}: {exc.strerror or exc}", EXIT_CONFIG
                ) from None
            click.echo(f"chart written to {path}", err=True)
    finally:
        store.close()
        engine.dispose()


def _check_chart_folder(chart: str) -> None:
    """A usage error (exit 2) before anything is read or written when the chart's folder is
    missing: matplotlib would fail only after the report was printed, as an internal error."""
    folder = Path(chart).parent
    if not folder.exists():
        raise CommandError(f"--chart: folder {folder} does not exist", EXIT_CONFIG)
    if not folder.is_dir():
        raise CommandError(f"--chart: {folder} is not a folder", EXIT_CONFIG)


@click.group()
def projections() -> None:
    """Read models that follow the event log."""


def _store_and_engine(settings: Settings, *, must_exist: bool = True) -> tuple[MessageStore, Any]:
    from smeg_actors.runtime.factory import open_engine

    return open_store(settings, must_exist=must_exist), open_engine(settings)


@projections.command("status")
@click.option("--json", "as_json", is_flag=True, help="JSON object: {followers: [...]}.")
@click.pass_context
def projections_status(ctx: click.Context, as_json: bool) -> None:
    """Each follower's position, lag (events, seconds) and parked events (the latest few)."""
    from smeg_actors.runtime.read_models import follower_status

    store, engine = _store_and_engine(settings_of(ctx))
    try:
        runners_ready(store, engine)
        rows = follower_status(store, engine)
    finally:
        store.close()
        engine.dispose()
    if as_json:
        click.echo(json.dumps({"followers": [row.as_json() for row in rows]}, indent=2))
        return
    click.echo(
        f"{'follower':<26} {'position':>10} {'head':>10} {'lag events':>11} {'lag s':>8} {'parked':>7}"
    )
    for row in rows:
        events, seconds = (str(row.lag_events), f"{row.lag_seconds:.1f}") if row.lag_known else ("-", "-")
        click.echo(
            f"{row.name:<26} {row.position:>10} {row.head:>10} {events:>11} {seconds:>8} {row.parked:>7}"
        )
    if any(row.parked for row in rows):
        click.echo("parked events, latest first (all of them: smeg projections parked):")
        for row in rows:
            for item in row.latest_parked:
                click.echo(f"  {_parked_line(item)}")


@projections.command("parked")
@click.option("--follower", default=None, help="Only this follower's (e.g. message_status).")
@click.option("--limit", type=click.IntRange(1), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="JSON list, latest first.")
@click.pass_context
def projections_parked(ctx: click.Context, follower: str | None, limit: int, as_json: bool) -> None:
    """Events a follower went past because it could not handle them, latest first.

    A read model lacks what a parked event would have changed (a rebuild replays it once the
    cause is fixed); the events exchange did not publish it; the failed queue did not receive it.
    """
    from smeg_actors.runtime.read_models import parked_events

    store, engine = _store_and_engine(settings_of(ctx))
    try:
        runners_ready(store, engine)
        found = parked_events(engine, follower, limit)
    finally:
        store.close()
        engine.dispose()
    if as_json:
        click.echo(json.dumps([item.as_json() for item in found], indent=2))
        return
    for item in found:
        click.echo(_parked_line(item))


def _parked_line(item: ParkedEvent) -> str:
    record = item.as_json()
    kind = record["topic"].rsplit(".", 1)[-1]
    message = record["message_id"] or record["aggregate_id"]
    return (
        f"{record['follower']}: position {record['position']} {kind} v{record['version']}"
        f" message {message} at {record['parked_at']}: {record['error']}"
    )


def runners_ready(store: MessageStore, engine: Any) -> list[Any]:
    """The runners (creating the read-model tables if they are missing)."""
    from smeg_actors.runtime.read_models import runners

    return runners(store, engine)


@projections.command("run")
@click.pass_context
def projections_run(ctx: click.Context) -> int:
    """Keep the read models and the events exchange up to date until SIGTERM/SIGINT.

    Pair it with SMEG_PROJECTOR=external on the ``smeg run`` processes to give the delivery
    pipeline a core of its own (SMEG_PROJECTOR=process makes ``smeg run`` start it as a child).
    Alone, it serves /healthz, /readyz and /metrics on SMEG_HTTP_HOST:SMEG_HTTP_PORT (0: off); as
    ``smeg run``'s child it serves nothing (its parent does).
    """
    import faulthandler
    import signal

    from smeg_actors.runtime.ops_http import metrics_directory, remove_directory
    from smeg_actors.runtime.process_group import PARENT_PID_VARIABLE

    settings = settings_of(ctx)
    parent = os.environ.get(PARENT_PID_VARIABLE)
    metrics = metrics_directory(settings.metrics_dir, parent, settings.http_port)  # before any metric
    from smeg_actors.runtime.factory import events_outbox
    from smeg_actors.runtime.process_group import announce_ready, watch_parent
    from smeg_actors.runtime.read_models import run_forever
    from smeg_actors.runtime.readiness import Pulse, for_projector

    store, engine = _store_and_engine(settings, must_exist=False)
    events = events_outbox(settings, store, engine)
    stop = Pulse()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # every thread's stack, on demand
    if parent:
        watch_parent(int(parent), stop.set)
    try:
        ready = runners_ready(store, engine)
        if not parent and settings.http_port:
            code = _serve_ops(settings, stop, for_projector(store, stop))
            if code is not None:
                return code
        announce_ready()
        run_forever(store, ready, events, stop)
    finally:
        events.close()
        store.close()
        engine.dispose()
        if not parent:
            remove_directory(metrics)
    return EXIT_OK


def _serve_ops(settings: Settings, pulse: Pulse, readiness: Readiness) -> int | None:
    """The ops endpoints of a lone ``smeg projections run`` (the queues' depths are ``smeg run``'s
    to read); the exit code when its port cannot be had."""
    from smeg_actors.runtime.serve import ops_server

    ops = ops_server(settings, alive=lambda: pulse.beat is not None, ready=readiness.state, queues=False)
    if isinstance(ops, int):
        return ops
    readiness.start()
    return None


@projections.command("rebuild")
@click.argument("name", required=False)
@click.option(
    "--workers",
    type=click.IntRange(1, 16),
    default=lambda: min(16, os.cpu_count() or 1),
    show_default="the number of CPUs",
    help="processes replaying the log, each a partition of the messages",
)
@click.pass_context
def projections_rebuild(ctx: click.Context, name: str | None, workers: int) -> None:
    """Replay the whole log into fresh tables and swap them in (safe while smeg run runs)."""
    import time

    from adapters.projections import ShadowRebuild
    from smeg_actors.runtime.read_models import all_projections, rate

    chosen = [p for p in all_projections() if name in (None, p.name)]
    if not chosen:
        known = ", ".join(p.name for p in all_projections())
        raise CommandError(f"unknown projection {name!r} (known: {known})", EXIT_CONFIG)
    store, engine = _store_and_engine(settings_of(ctx))
    try:
        runners_ready(store, engine)
        started = time.monotonic()
        label = name or "all read models"

        def show(done: int, head: int) -> None:
            width = 30
            filled = width * done // max(head, 1)
            bar = "#" * filled + "-" * (width - filled)
            progress(f"{label:<24} [{bar}] {done}/{head} events, {rate(done, started):,.0f} events/s")

        applied = ShadowRebuild(store, engine, chosen, name=name, workers=workers).run(show)
        end_progress()
        for projection in chosen:
            click.echo(
                f"rebuilt {projection.name}: {applied} events in {time.monotonic() - started:.1f}s"
                f" ({rate(applied, started):,.0f} events/s)"
            )
    finally:
        store.close()
        engine.dispose()
