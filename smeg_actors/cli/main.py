"""The ``smeg`` command line: run, check, demo, history, audit, retry, redrive.

Every error a user can cause ends in one line on stderr and a non-zero exit code, never a
traceback; ``main(argv)`` returns the code so tests can call it directly.

Start-up is part of the interface: this module and the command modules it imports hold click and
the standard library only, and each command imports what it uses when it runs, so ``smeg --help``
loads no SQLAlchemy, eventsourcing, pika or pydantic and ``smeg history`` only the store
(``scripts/time_cli.py`` times them; ``tests/e2e/test_cli_startup.py`` keeps the imports out).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import click

from smeg_actors.cli.alerts import alerts
from smeg_actors.cli.flags import flags
from smeg_actors.cli.fleet import archive, failures, messages, retry
from smeg_actors.cli.projections import audit_replay, projections, report
from smeg_actors.cli.providers import providers
from smeg_actors.cli.schedule import schedule
from smeg_actors.cli.settings import settings_command
from smeg_actors.cli.support import CommandError, open_store, parse_time, quiet_stdout, settings_of
from smeg_actors.runtime.exit_codes import EXIT_CONFIG, EXIT_OK, EXIT_REFUSED, EXIT_UNHEALTHY

if TYPE_CHECKING:
    from adapters.event_store import MessageStore
    from smeg_actors.runtime.config import Settings

#: Commands that only read or change the store, which logs nothing: they leave structlog (about
#: 0.1 s to import) unloaded, unless a warning about an unknown variable needs it.
#: ``tests/e2e/test_cli_startup.py`` checks that ``history`` really loads no structlog.
QUIET_COMMANDS = frozenset({"history", "audit", "retry", "settings"})


@click.group()
@click.version_option(package_name="smeg", message="smeg %(version)s")
@click.option("--config", "config_path", type=str, default=None, help="TOML settings file.")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None) -> None:
    """smeg: resilient SMS/IM delivery."""
    from smeg_actors.runtime.config import load_settings, unknown_variables

    settings = load_settings(os.environ, config_path)
    unknown = unknown_variables(os.environ)
    if unknown or ctx.invoked_subcommand not in QUIET_COMMANDS:
        _configure_logging(settings)
    if unknown:
        import structlog

        for variable, closest in unknown:
            structlog.get_logger(__name__).warning(
                "unknown_setting_variable", variable=variable, closest_setting=closest
            )
    ctx.obj = {"settings": settings, "config_path": config_path}


def _configure_logging(settings: Settings) -> None:
    from smeg_actors.runtime.logs import configure_logging
    from smeg_actors.runtime.process_group import PARENT_PID_VARIABLE

    in_group = PARENT_PID_VARIABLE in os.environ  # one of several processes writing one stream
    configure_logging(
        fmt=settings.log_format, level=settings.log_level, pid=os.getpid() if in_group else None
    )


@cli.command()
@click.argument("message_id")
@click.option("--json", "as_json", is_flag=True, help="JSON array, oldest first.")
@click.pass_context
def history(ctx: click.Context, message_id: str, as_json: bool) -> None:
    """Print the timeline of one message."""
    from adapters.event_store import MessageNotFoundError
    from domain.audit import describe, event_record

    store = open_store(settings_of(ctx))
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
        quiet_stdout()


@cli.group()
def audit() -> None:
    """Raw views of the event history."""


@audit.command("export")
@click.option("--since", default=None, help="ISO 8601; events at or after it.")
@click.option("--until", default=None, help="ISO 8601; events before it.")
@click.pass_context
def audit_export(ctx: click.Context, since: str | None, until: str | None) -> None:
    """Every event in the window, in store order, as JSON lines on stdout."""
    from smeg_actors.cli.audit_export import export_events

    start, end = parse_time(since, "--since"), parse_time(until, "--until")
    store = open_store(settings_of(ctx))
    try:
        export_events(store, sys.stdout, since=start, until=end)
        sys.stdout.flush()
    except BrokenPipeError:
        quiet_stdout()
    finally:
        store.close()


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object per dependency, in a list.")
@click.pass_context
def check(ctx: click.Context, as_json: bool) -> int:
    """Check the store, the broker and every provider; exit 3 if any fails."""
    from smeg_actors.runtime.factory import build_providers, check_routing
    from smeg_actors.runtime.factory import open_store as open_configured_store
    from smeg_actors.runtime.health import dependency_checks, run_checks

    settings = settings_of(ctx)
    stores: list[MessageStore] = []

    def store() -> MessageStore:
        stores.append(open_configured_store(settings))
        return stores[-1]

    providers = build_providers(settings)
    check_routing(settings, providers)
    healthy, results = run_checks(dependency_checks(settings, store, providers))
    for opened in stores:
        opened.close()
    if as_json:
        click.echo(json.dumps([result.as_json() for result in results], indent=2))
    else:
        for result in results:
            click.echo(result.line())
    return EXIT_OK if healthy else EXIT_UNHEALTHY


@cli.command()
@click.option(
    "--processes",
    default=None,
    metavar="N|auto",
    help="delivery processes sharing the queue and store (auto: one per CPU)  [default: SMEG_PROCESSES, 1]",
)
@click.pass_context
def run(ctx: click.Context, processes: str | None) -> int:
    """Consume send requests from RabbitMQ and deliver them until stopped."""
    from smeg_actors.runtime.config import processes_value
    from smeg_actors.runtime.ops_http import metrics_directory
    from smeg_actors.runtime.process_group import PARENT_PID_VARIABLE

    settings = settings_of(ctx)
    parent = os.environ.get(PARENT_PID_VARIABLE)
    metrics_directory(settings.metrics_dir, parent, settings.http_port)  # before any metric
    from smeg_actors.runtime.serve import serve

    if processes is not None:
        try:
            settings = settings.model_copy(update={"processes": processes_value(processes)})
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--processes") from None
    return serve(settings, ctx.obj["config_path"])


@cli.command()
@click.option("--limit", type=click.IntRange(min=1), default=None, help="At most N messages.")
@click.option("--dry-run", is_flag=True, help="Show what would be redriven; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="The outcome as one JSON object.")
@click.pass_context
def redrive(ctx: click.Context, limit: int | None, dry_run: bool, as_json: bool) -> None:
    """Give the non-permanent failures on the failed queue a fresh cycle."""
    import dataclasses

    from adapters.rabbitmq import BrokerUnavailableError
    from smeg_actors.actors.redrive import redrive as redrive_queue
    from smeg_actors.runtime.clock import utc_now
    from smeg_actors.runtime.factory import open_failed_queue

    settings = settings_of(ctx)
    store = open_store(settings, must_exist=False)
    try:
        reader = open_failed_queue(settings)
    except BrokerUnavailableError as exc:
        store.close()
        raise CommandError(f"broker unavailable: {exc}", EXIT_UNHEALTHY) from None
    try:
        report = redrive_queue(store, reader, clock=utc_now, limit=limit, dry_run=dry_run)
    finally:
        reader.close()
        store.close()
    if as_json:
        click.echo(json.dumps({"dry_run": dry_run, **dataclasses.asdict(report)}, indent=2))
        return
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

    from smeg_actors.cli.demo import run_demo

    return run_demo(Path(database), messages)


audit.add_command(audit_replay)
cli.add_command(report)
cli.add_command(projections)
cli.add_command(settings_command)
cli.add_command(alerts)
cli.add_command(providers)
cli.add_command(schedule)
cli.add_command(messages)
cli.add_command(failures)
cli.add_command(retry)
cli.add_command(archive)
cli.add_command(flags)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the exit code."""
    from adapters.gc_policy import collect_less

    collect_less()
    try:
        result: Any = cli.main(args=list(argv) if argv is not None else None, standalone_mode=False)
    except CommandError as exc:
        click.echo(f"smeg: {exc}", err=True)
        return exc.code
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
        known = _known_failure(exc)
        if known is not None:
            line, code = known
            click.echo(f"smeg: {line}", err=True)
            return code
        if os.environ.get("SMEG_DEBUG"):
            raise
        first = (str(exc).strip().splitlines() or [""])[0]
        click.echo(
            f"smeg: internal error: {type(exc).__name__}: {first} (SMEG_DEBUG=1 for details)", err=True
        )
        return EXIT_REFUSED
    return result if isinstance(result, int) else EXIT_OK


def _known_failure(exc: Exception) -> tuple[str, int] | None:
    """The one line and the exit code of a failure that is no defect: invalid settings, a store
    or a read-model database that failed; None for anything else.

    Each class is looked up in its module only when that module is loaded: an exception of a
    module never imported cannot have been raised, and ``smeg --help`` must not import
    SQLAlchemy to find that out.
    """
    if isinstance(exc, _loaded("smeg_actors.runtime.config", "SettingsError")):
        return str(exc), EXIT_CONFIG
    if isinstance(exc, _loaded("adapters.event_store", "StoreError")):
        return f"event store failed: {exc}", EXIT_UNHEALTHY
    if isinstance(exc, _loaded("sqlalchemy.exc", "SQLAlchemyError")):
        orig = getattr(exc, "orig", None)
        dbapi = isinstance(exc, _loaded("sqlalchemy.exc", "DBAPIError")) and orig is not None
        reason = orig if dbapi else exc
        first = (" ".join(str(reason).split()) or type(reason).__name__)[:300]
        return f"read-model database failed: {first}", EXIT_UNHEALTHY
    return None


def _loaded(module: str, name: str) -> type[Exception] | tuple[()]:
    """``module.name`` if the module is loaded, else an empty tuple (which ``isinstance`` never
    matches)."""
    found = sys.modules.get(module)
    cls = getattr(found, name, None) if found is not None else None
    return cls if isinstance(cls, type) and issubclass(cls, Exception) else ()


def main_exit() -> None:
    """Console-script entry point."""
    sys.exit(main())
