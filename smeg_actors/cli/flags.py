"""``smeg flags``: the operators' flags and kill switches, and ``smeg flags set``.

A flag is a ``FlagSet`` event in the store (``domain.flags``) with who set it (``cli:`` and the
operating-system user), why, and until when (``--for``); every ``smeg run`` process and node obeys
it within about 2 s. Cheap to import (click and the standard library): what a command needs
beyond that it imports when it runs.
"""

from __future__ import annotations

import json

import click

from smeg_actors.cli.support import MAX_REASON, CommandError, one_line, open_store, operator, settings_of
from smeg_actors.runtime import ops_views
from smeg_actors.runtime.exit_codes import EXIT_CONFIG

#: The flags, for the help text (``domain.flags.KNOWN`` is the record; a test keeps them equal).
FLAG_NAMES = (
    "delivery.paused",
    "delivery.paused.sms",
    "delivery.paused.im",
    "redrive.auto",
    "canary.enabled",
)

EXIT_CODES = """\b
Exit codes: 0 done; 1 refused (other writers kept changing the flags: try again);
2 unknown flag, bad value, --reason or --for; 3 event store unavailable."""


@click.group("flags", invoke_without_command=True, epilog=EXIT_CODES)
@click.option("--json", "as_json", is_flag=True, help="A JSON list, one object per flag.")
@click.pass_context
def flags(ctx: click.Context, as_json: bool) -> None:
    """Every flag's value in force, who set it, why and until when (unset or expired: its default).

    \b
    delivery.paused       true: nothing is taken from the send queue, no retry is released
    delivery.paused.sms   true: sms requests are received and held, not attempted (also .im)
    redrive.auto          false: the automatic redriver does nothing
    canary.enabled        false: no canary is sent
    """
    if ctx.invoked_subcommand is not None:
        return
    rows = ops_views.flag_rows(ops_views.read_flags(settings_of(ctx), open_store=open_store))
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    width = max(len(row["name"]) for row in rows)
    for row in rows:
        if row["by"] is None:
            click.echo(f"{row['name']:<{width}}  {_word(row['value'])}  (default)")
            continue
        until = f" until {row['expires_at']}" if row["expires_at"] else ""
        click.echo(
            f"{row['name']:<{width}}  {_word(row['value'])}  set by {row['by']}{until}: {row['reason']}"
        )


@flags.command("set", epilog=EXIT_CODES)
@click.argument("name")
@click.argument("value")
@click.option(
    "--reason", required=True, callback=one_line(MAX_REASON), help="Why (recorded, shown by `smeg flags`)."
)
@click.option(
    "--for",
    "duration",
    metavar="DURATION",
    help="Back to its default after this long: 30s, 30m, 2h or 1d.  [default: until set again]",
)
@click.pass_context
def set_flag(ctx: click.Context, name: str, value: str, reason: str, duration: str | None) -> None:
    """Set flag NAME to VALUE (true or false), recorded with your user name and REASON.

    NAME is one of delivery.paused, delivery.paused.sms, delivery.paused.im, redrive.auto,
    canary.enabled. Every `smeg run` process and node obeys it within about 2 s.
    """
    from domain.flags import parse_duration, spec_of
    from domain.ports import ConflictError
    from smeg_actors.runtime.clock import utc_now

    try:
        parsed = spec_of(name).parse(value)
        lasting = parse_duration(duration) if duration is not None else None
    except ValueError as exc:
        raise CommandError(str(exc), EXIT_CONFIG) from None
    who, now = f"cli:{operator()}", utc_now()
    until = now + lasting if lasting is not None else None
    store = open_store(settings_of(ctx), must_exist=False)
    try:
        ops_views.set_flag(store, name, parsed, by=who, reason=reason, now=now, until=until)
    except ValueError as exc:
        raise CommandError(str(exc), EXIT_CONFIG) from None
    except ConflictError as exc:
        raise CommandError(str(exc)) from None
    finally:
        store.close()
    for_how_long = f" until {until.isoformat()}" if until is not None else ""
    click.echo(f"{name} set to {_word(parsed)}{for_how_long} by {who}: every process obeys it within 2 s")


def _word(value: bool) -> str:
    return "true" if value else "false"
