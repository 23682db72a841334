"""``smeg providers``: each configured provider's health, and the operators' switch for one.

``disable`` is the kill switch: a ``ProviderDisabled`` event with who and why; every process
holds that provider's messages (no attempt, nothing exhausted) within about 2 s and delivers
them once it is enabled again. Both are recorded with the person's name (``--by``, by default
the operating-system user).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING

import click

from smeg_actors.cli.support import (
    MAX_BY,
    MAX_REASON,
    CommandError,
    one_line,
    open_store,
    operator,
    settings_of,
)
from smeg_actors.runtime.exit_codes import EXIT_CONFIG
from smeg_actors.runtime.ops_views import provider_rows

if TYPE_CHECKING:
    from domain.provider_health import ProviderHealth
    from smeg_actors.runtime.config import Settings


@click.group("providers", invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="A JSON list, one object per provider.")
@click.pass_context
def providers(ctx: click.Context, as_json: bool) -> None:
    """Each configured provider's state (closed, open, half_open, disabled) and held messages."""
    if ctx.invoked_subcommand is not None:
        return
    rows = provider_rows(settings_of(ctx), open_store=open_store)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        extra = f"  disabled by {row['disabled_by']}: {row['disabled_reason']}" if row["disabled_by"] else ""
        since = f"  since {row['since']}" if row["since"] else ""
        rate = f"  rate limit {row['rate_limit']:g}/s" if row["rate_limit"] else ""
        fallback = f"  fallback {', '.join(row['fallback'])}" if row["fallback"] else ""
        click.echo(f"{row['name']}  {row['state']}  held {row['held']}{since}{rate}{fallback}{extra}")


@providers.command("disable")
@click.argument("name")
@click.option(
    "--reason",
    required=True,
    callback=one_line(MAX_REASON),
    help="Why (recorded, shown by `smeg providers`).",
)
@click.option("--by", "by", callback=one_line(MAX_BY), help="Who (recorded)  [default: the OS user]")
@click.pass_context
def disable(ctx: click.Context, name: str, reason: str, by: str | None) -> None:
    """Stop every attempt through NAME: its messages are held until it is enabled."""
    who = by or operator()
    _change(ctx, name, lambda health, now: health.disable(by=who, reason=reason, now=now))
    click.echo(f"provider {name} disabled by {who}: its messages are held (every process, within 2 s)")


@providers.command("enable")
@click.argument("name")
@click.option("--by", "by", callback=one_line(MAX_BY), help="Who (recorded)  [default: the OS user]")
@click.pass_context
def enable(ctx: click.Context, name: str, by: str | None) -> None:
    """Let attempts through NAME again: its held messages are delivered."""
    who = by or operator()
    _change(ctx, name, lambda health, now: health.enable(by=who, now=now))
    click.echo(
        f"provider {name} enabled by {who}: its held messages go out from their next look (within 5 s),"
        " at a pace ramped up from 10 %"
    )


def _change(ctx: click.Context, name: str, apply: Callable[[ProviderHealth, datetime], None]) -> None:
    from adapters.provider_health_store import ProviderHealthStore
    from domain.errors import InvalidTransitionError
    from smeg_actors.runtime.clock import utc_now

    settings = settings_of(ctx)
    _check_configured(settings, name)
    store = open_store(settings, must_exist=False)
    now = utc_now()
    try:
        ProviderHealthStore(store).change(name, lambda health: apply(health, now), now=now)
    except InvalidTransitionError as exc:
        raise CommandError(f"{name}: {str(exc).removeprefix(f'{name}: ')}") from None
    finally:
        store.close()


def _check_configured(settings: Settings, name: str) -> None:
    configured = sorted(settings.provider_configs())
    if name not in configured:
        known = ", ".join(configured) or "none"
        raise CommandError(f"not a configured provider: {name} (configured: {known})", EXIT_CONFIG)
