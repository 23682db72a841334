"""``smeg alerts``: the open alerts (``--all``: resolved ones too), and ``ack ID`` to say a person
has seen one (recorded with who). An alert is one rule for one key: a provider for
``provider_down`` and ``failures``, ``all`` for ``retries_overdue``, ``send`` for
``backlog_growing``; its id (``alert_id``) names the alert and its episode.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

import click

from smeg_actors.cli.support import MAX_BY, CommandError, one_line, open_store, operator, settings_of

if TYPE_CHECKING:
    from domain.alert import Alert
    from smeg_actors.runtime.config import Settings


def _recorded(settings: Settings) -> list[Alert]:
    from adapters.alert_store import AlertStore

    store = open_store(settings)
    try:
        alerts = AlertStore(store)
        index = alerts.index()
        keys = index.keys if index is not None else []
        return [a for rule, key in keys if (a := alerts.get(rule, key)) is not None and a.episode]
    finally:
        store.close()


def alert_rows(settings: Settings, *, everything: bool) -> list[dict[str, Any]]:
    """The open alerts (``everything``: resolved ones too) as ``--json`` lists them, newest first."""
    found = [a for a in _recorded(settings) if everything or a.is_open]
    return sorted((_row(a) for a in found), key=lambda r: r["raised_at"] or "", reverse=True)


@click.group("alerts", invoke_without_command=True)
@click.option("--all", "everything", is_flag=True, help="Resolved alerts too (each one's latest episode).")
@click.option("--json", "as_json", is_flag=True, help="A JSON list, one object per alert.")
@click.pass_context
def alerts(ctx: click.Context, everything: bool, as_json: bool) -> None:
    """Open alerts (pending or firing), newest first; exit 0 whether or not there are any."""
    if ctx.invoked_subcommand is not None:
        return
    rows = alert_rows(settings_of(ctx), everything=everything)
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
    from adapters.alert_store import AlertStore
    from smeg_actors.runtime.clock import utc_now

    settings = settings_of(ctx)
    who = by or operator()
    store = open_store(settings)
    try:
        repository = AlertStore(store)
        index = repository.index()
        for rule, key in index.keys if index is not None else []:
            alert = repository.get(rule, key)
            if alert is not None and alert.episode and alert.alert_id == alert_id:
                now = utc_now()
                repository.change(rule, key, _acknowledge(who, now), now=now)
                click.echo(f"alert {alert_id} ({rule} {key}) acknowledged by {who}")
                return
    finally:
        store.close()
    raise CommandError(f"no alert {alert_id} (see smeg alerts --all)")


def _acknowledge(who: str, now: datetime) -> Callable[[Alert], bool]:
    def record(alert: Alert) -> bool:
        alert.acknowledge(who, now=now)
        return True

    return record


def _row(alert: Alert) -> dict[str, Any]:
    def iso(moment: datetime | None) -> str | None:
        return moment.isoformat().replace("+00:00", "Z") if moment is not None else None

    return {
        "alert_id": alert.alert_id,
        "rule": alert.rule,
        "key": alert.key,
        "status": alert.status,
        "severity": alert.severity,
        "summary": alert.summary,
        "value": alert.value,
        "raised_at": iso(alert.raised_at or alert.since),
        "resolved_at": iso(alert.resolved_at),
        "acknowledged_by": alert.acknowledged_by,
    }
