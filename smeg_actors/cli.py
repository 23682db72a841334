"""The ``smeg`` command line: run, check, demo, history, audit, retry, redrive.

Every error a user can cause ends in one line on stderr and a non-zero exit code, never a
traceback; ``main(argv)`` returns the code so tests can call it directly.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

import click

from adapters.event_store import MessageNotFoundError, MessageStore, StoreError
from domain.audit import describe, event_record
from smeg_actors.config import Settings, SettingsError, load_settings
from smeg_actors.exit_codes import EXIT_CONFIG, EXIT_OK, EXIT_REFUSED, EXIT_UNHEALTHY
from smeg_actors.logs import configure_logging


class CommandError(Exception):
    """A one-line failure with its exit code."""

    def __init__(self, message: str, code: int = EXIT_REFUSED) -> None:
        super().__init__(message)
        self.code = code


def _settings(ctx: click.Context) -> Settings:
    settings = ctx.obj["settings"]
    assert isinstance(settings, Settings)
    return settings


def open_store(settings: Settings) -> MessageStore:
    """The event store, or a CommandError (exit 3) saying why it cannot be opened."""
    try:
        from smeg_actors.wiring import open_store as open_configured_store

        return open_configured_store(settings)
    except StoreError as exc:
        raise CommandError(f"event store unavailable: {exc}", EXIT_UNHEALTHY) from None


def parse_time(value: str | None, option: str) -> datetime | None:
    """An ISO 8601 timestamp (naive means UTC), or a CommandError naming the option."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise CommandError(f"{option}: not an ISO 8601 timestamp: {value!r}", EXIT_CONFIG) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


@click.group()
@click.option("--config", "config_path", type=str, default=None, help="TOML settings file.")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None) -> None:
    """smeg: resilient SMS/IM delivery."""
    settings = load_settings(os.environ, config_path)
    configure_logging(fmt=settings.log_format, level=settings.log_level)
    ctx.obj = {"settings": settings}


@cli.command()
@click.argument("message_id")
@click.option("--json", "as_json", is_flag=True, help="JSON array, oldest first.")
@click.pass_context
def history(ctx: click.Context, message_id: str, as_json: bool) -> None:
    """Print the timeline of one message."""
    store = open_store(_settings(ctx))
    try:
        message = store.get_by_message_id(message_id)
        records = [event_record(e) for e in store.history(message.id)]
    except MessageNotFoundError:
        raise CommandError(f"unknown message id: {message_id}") from None
    finally:
        store.close()
    try:
        if as_json:
            click.echo(json.dumps(records, ensure_ascii=False, indent=2))
            return
        click.echo(f"message {message_id} ({message.status}, {message.attempts} attempts)")
        for record in records:
            click.echo(describe(record))
        sys.stdout.flush()
    except BrokenPipeError:
        _quiet_stdout()


@cli.group()
def audit() -> None:
    """Raw views of the event history."""


@audit.command("export")
@click.option("--since", default=None, help="ISO 8601; events at or after it.")
@click.option("--until", default=None, help="ISO 8601; events before it.")
@click.pass_context
def audit_export(ctx: click.Context, since: str | None, until: str | None) -> None:
    """Every event in the window, in store order, as JSON lines on stdout."""
    from smeg_actors.audit_export import export_events

    start, end = parse_time(since, "--since"), parse_time(until, "--until")
    store = open_store(_settings(ctx))
    try:
        export_events(store, sys.stdout, since=start, until=end)
        sys.stdout.flush()
    except BrokenPipeError:
        _quiet_stdout()
    finally:
        store.close()


@audit.command("replay")
@click.argument("message_id")
@click.option("--at", "at", required=True, help="ISO 8601: show the state as it was then.")
@click.option("--json", "as_json", is_flag=True, help="JSON object.")
@click.pass_context
def audit_replay(ctx: click.Context, message_id: str, at: str, as_json: bool) -> None:
    """Replay a message's events up to a moment and show its state then."""
    from domain.request import mask_address

    moment = parse_time(at, "--at")
    assert moment is not None
    store = open_store(_settings(ctx))
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


@cli.command()
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

    from smeg_actors.report import ChartUnavailableError, build_report, draw_chart, render

    end = parse_time(until, "--until") or datetime.now(timezone.utc)
    start = parse_time(since, "--since") or end - timedelta(hours=24)
    store, engine = _store_and_engine(_settings(ctx))
    try:
        for runner in runners_ready(store, engine):
            runner.catch_up()
        click.echo(render(build_report(engine, start, end, provider), fmt))
        if chart:
            try:
                path = draw_chart(engine, start, end, provider, chart)
            except ChartUnavailableError as exc:
                raise CommandError(str(exc), EXIT_CONFIG) from None
            click.echo(f"chart written to {path}", err=True)
    finally:
        store.close()
        engine.dispose()


@cli.command()
@click.pass_context
def check(ctx: click.Context) -> int:
    """Check the store, the broker and every provider; exit 3 if any fails."""
    from smeg_actors.health import dependency_checks, run_checks
    from smeg_actors.wiring import build_providers
    from smeg_actors.wiring import open_store as open_configured_store

    settings = _settings(ctx)
    stores: list[MessageStore] = []

    def store() -> MessageStore:
        stores.append(open_configured_store(settings))
        return stores[-1]

    healthy, lines = run_checks(dependency_checks(settings, store, build_providers(settings)))
    for opened in stores:
        opened.close()
    for line in lines:
        click.echo(line)
    return EXIT_OK if healthy else EXIT_UNHEALTHY


@cli.command()
@click.pass_context
def run(ctx: click.Context) -> int:
    """Consume send requests from RabbitMQ and deliver them until stopped."""
    from smeg_actors.serve import serve

    return serve(_settings(ctx))


@cli.command()
@click.argument("message_id")
@click.pass_context
def retry(ctx: click.Context, message_id: str) -> None:
    """Start a fresh cycle of attempts on a Failed message."""
    from domain.message import Message
    from smeg_actors.clock import utc_now

    store = open_store(_settings(ctx))
    try:
        outcome = store.update(
            Message.create_id(message_id),
            lambda m: m.request_retry("operator", now=utc_now()),
        )
    except MessageNotFoundError:
        raise CommandError(f"unknown message id: {message_id}") from None
    finally:
        store.close()
    if outcome.refused is not None:
        raise CommandError(f"cannot retry {message_id}: {outcome.refused}")
    if outcome.message is None:
        raise CommandError(f"cannot retry {message_id}: changed concurrently, try again")
    click.echo(f"retry requested for {message_id}: a fresh cycle of attempts starts now")


@cli.command()
@click.option("--limit", type=click.IntRange(min=1), default=None, help="At most N messages.")
@click.option("--dry-run", is_flag=True, help="Show what would be redriven; change nothing.")
@click.pass_context
def redrive(ctx: click.Context, limit: int | None, dry_run: bool) -> None:
    """Give the non-permanent failures on the failed queue a fresh cycle."""
    from adapters.rabbitmq import BrokerUnavailableError, FailedQueueReader, Topology
    from smeg_actors.clock import utc_now
    from smeg_actors.redrive import redrive as redrive_queue

    settings = _settings(ctx)
    store = open_store(settings)
    try:
        reader = FailedQueueReader(settings.amqp_url, Topology(settings.queue_prefix))
    except BrokerUnavailableError as exc:
        store.close()
        raise CommandError(f"broker unavailable: {exc}", EXIT_UNHEALTHY) from None
    try:
        report = redrive_queue(store, reader, clock=utc_now, limit=limit, dry_run=dry_run)
    finally:
        reader.close()
        store.close()
    verb = "would redrive" if dry_run else "redriven"
    for message_id in report.redriven:
        click.echo(f"{verb}: {message_id}")
    for message_id in report.skipped:
        click.echo(f"skipped (no longer failed): {message_id}")
    for message_id in report.permanent:
        click.echo(f"kept (permanent failure): {message_id}")
    for message_id in report.unknown:
        click.echo(f"kept (not in this store): {message_id}")
    click.echo(("dry run: " if dry_run else "") + report.summary())


@cli.command()
@click.option("--messages", type=click.IntRange(1, 100_000), default=400, show_default=True)
@click.option("--database", default="smeg-demo.db", show_default=True, help="SQLite file (recreated).")
def demo(messages: int, database: str) -> int:
    """Run the whole pipeline in one process on embedded defaults (under a minute)."""
    from pathlib import Path

    from smeg_actors.demo import run_demo

    return run_demo(Path(database), messages)


@cli.group()
def projections() -> None:
    """Read models that follow the event log."""


def _store_and_engine(settings: Settings) -> tuple[MessageStore, Any]:
    from smeg_actors.wiring import open_engine

    return open_store(settings), open_engine(settings)


@projections.command("status")
@click.pass_context
def projections_status(ctx: click.Context) -> None:
    """Each follower's position and lag (events, seconds)."""
    from smeg_actors.read_models import follower_status

    store, engine = _store_and_engine(_settings(ctx))
    try:
        runners_ready(store, engine)
        rows = follower_status(store, engine)
    finally:
        store.close()
        engine.dispose()
    click.echo(f"{'follower':<26} {'position':>10} {'head':>10} {'lag events':>11} {'lag s':>8}")
    for row in rows:
        click.echo(
            f"{row.name:<26} {row.position:>10} {row.head:>10} {row.lag_events:>11} {row.lag_seconds:>8.1f}"
        )


def runners_ready(store: MessageStore, engine: Any) -> list[Any]:
    """The runners (creating the read-model tables if they are missing)."""
    from smeg_actors.read_models import runners

    return runners(store, engine)


@projections.command("run")
@click.pass_context
def projections_run(ctx: click.Context) -> None:
    """Keep the read models and the events exchange up to date until SIGTERM/SIGINT.

    Pair it with SMEG_PROJECTOR=external on the ``smeg run`` processes to give the delivery
    pipeline a core of its own.
    """
    import signal
    import threading

    from adapters.events_exchange import EventsExchangePublisher
    from adapters.rabbitmq import Topology
    from smeg_actors.read_models import run_forever

    settings = _settings(ctx)
    store, engine = _store_and_engine(settings)
    events = EventsExchangePublisher(store, engine, settings.amqp_url, Topology(settings.queue_prefix))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        run_forever(store, runners_ready(store, engine), events, stop)
    finally:
        events.close()
        store.close()
        engine.dispose()


@projections.command("rebuild")
@click.argument("name", required=False)
@click.pass_context
def projections_rebuild(ctx: click.Context, name: str | None) -> None:
    """Replay the whole log into fresh tables and swap them in (safe while smeg run runs)."""
    import time

    from adapters.projections import ShadowRebuild
    from smeg_actors.read_models import all_projections, rate

    chosen = [p for p in all_projections() if name in (None, p.name)]
    if not chosen:
        known = ", ".join(p.name for p in all_projections())
        raise CommandError(f"unknown projection {name!r} (known: {known})", EXIT_CONFIG)
    store, engine = _store_and_engine(_settings(ctx))
    try:
        runners_ready(store, engine)
        started = time.monotonic()
        label = name or "all read models"

        def progress(done: int, head: int) -> None:
            width = 30
            filled = width * done // max(head, 1)
            bar = "#" * filled + "-" * (width - filled)
            click.echo(
                f"\r{label:<24} [{bar}] {done}/{head} events, {rate(done, started):,.0f} events/s",
                nl=False,
                err=True,
            )

        applied = ShadowRebuild(store, engine, chosen, name=name).run(progress)
        click.echo("", err=True)
        for projection in chosen:
            click.echo(
                f"rebuilt {projection.name}: {applied} events in {time.monotonic() - started:.1f}s"
                f" ({rate(applied, started):,.0f} events/s)"
            )
    finally:
        store.close()
        engine.dispose()


def _quiet_stdout() -> None:
    """The reader went away (``| head``): that is not an error; stop writing quietly."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the exit code."""
    try:
        result: Any = cli.main(args=list(argv) if argv is not None else None, standalone_mode=False)
    except CommandError as exc:
        click.echo(f"smeg: {exc}", err=True)
        return exc.code
    except SettingsError as exc:
        click.echo(f"smeg: {exc}", err=True)
        return EXIT_CONFIG
    except StoreError as exc:
        click.echo(f"smeg: event store failed: {exc}", err=True)
        return EXIT_UNHEALTHY
    except click.exceptions.Abort:
        return EXIT_CONFIG
    except click.ClickException as exc:
        click.echo(f"smeg: {exc.format_message()}", err=True)
        return EXIT_CONFIG
    except BrokenPipeError:
        return EXIT_OK
    except KeyboardInterrupt:
        return EXIT_CONFIG
    except Exception as exc:
        if os.environ.get("SMEG_DEBUG"):
            raise
        first = (str(exc).strip().splitlines() or [""])[0]
        click.echo(
            f"smeg: internal error: {type(exc).__name__}: {first} (SMEG_DEBUG=1 for details)", err=True
        )
        return EXIT_REFUSED
    return result if isinstance(result, int) else EXIT_OK


def main_exit() -> None:
    """Console-script entry point."""
    sys.exit(main())
