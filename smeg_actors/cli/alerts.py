"""``smeg alerts``: the open alerts (``--all``: resolved ones too), and ``ack ID`` to say a person
has seen one (recorded with who). An alert is one rule for one key: a provider for
``provider_down`` and ``failures``, ``all`` for ``retries_overdue``, ``send`` for
``backlog_growing``; its id (``alert_id``) names the alert and its episode.
"""

from __future__ import annotations

import json

import click

from smeg_actors.cli.support import MAX_BY, CommandError, one_line, open_store, operator, settings_of
from smeg_actors.runtime.ops_views import alert_rows


@click.group("alerts", invoke_without_command=True)
@click.option("--all", "everything", is_flag=True, help="Resolved alerts too (each one's latest episode).")
@click.option("--json", "as_json", is_flag=True, help="A JSON list, one object per alert.")
@click.pass_context
def alerts(ctx: click.Context, everything: bool, as_json: bool) -> None:
    """Open alerts (pending or firing), newest first; exit 0 whether or not there are any."""
    if ctx.invoked_subcommand is not None:
        return
    rows = alert_rows(settings_of(ctx), everything=everything, open_store=open_store)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no alerts" if everything else "no open alerts")
    for row in rows:
        acked = f"  acked by {row['acknowledged_by']}" if row["acknowledged_by"] else ""
        click.echo(f"{row['alert_id']}  {row['status']:<8} {row['severity']:<8} {row['summary']}{acked}")


@alerts.command("ack")
@click.argument("alert_id")
@click.option("--by", "by", callback=one_line(MAX_BY), help="Who (recorded)  [default: the OS user]")
@click.pass_context
def ack(ctx: click.Context, alert_id: str, by: str | None) -> None:
    """Record that a person has seen alert ALERT_ID (as `smeg alerts` lists it)."""
    from smeg_actors.runtime.ops_views import acknowledge_alert

    who = by or operator()
    found = acknowledge_alert(settings_of(ctx), alert_id, who, open_store=open_store)
    if found is not None:
        click.echo(f"alert {alert_id} ({found[0]} {found[1]}) acknowledged by {who}")
        return
    raise CommandError(f"no alert {alert_id} (see smeg alerts --all)")
