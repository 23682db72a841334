"""``smeg schedule``: what is due when, from the ``message_status`` read model.

For an operator asking "what will go out in the next minutes, and what is stuck behind a
provider": counts per minute and provider over a window, held messages per provider, and the
oldest held message. What counts as due, and the meaning of ``since``, are
``adapters.schedule_view``'s (received and overdue: now; in flight: not due).
"""

from __future__ import annotations

import json
import re
from datetime import timedelta
from typing import TYPE_CHECKING

import click

from smeg_actors.cli.support import open_store, settings_of
from smeg_actors.runtime.ops_views import read_schedule, schedule_record, schedule_time

if TYPE_CHECKING:
    from adapters.schedule_view import Schedule

#: The farthest ``--within``: no retry is scheduled further out (a provider's Retry-After is
#: capped at 24 h), so a longer window would show nothing more.
MAX_WITHIN = timedelta(hours=24)
_DURATION = re.compile(r"([0-9]{1,6})([smh])")
_UNITS = {"s": 1, "m": 60, "h": 3600}


def parse_within(_ctx: click.Context | None, _param: click.Parameter | None, value: str) -> timedelta:
    """A click callback: ``30s``, ``10m``, ``2h`` (more than 0, at most 24h), or a usage error."""
    match = _DURATION.fullmatch(value.strip())
    if match is None:
        raise click.BadParameter(f"{value!r} is not a duration like 30s, 10m or 2h")
    window = timedelta(seconds=int(match[1]) * _UNITS[match[2]])
    if not timedelta(0) < window <= MAX_WITHIN:
        raise click.BadParameter(f"{value!r} must be more than 0s and at most 24h")
    return window


@click.command("schedule")
@click.option(
    "--within",
    default="10m",
    show_default=True,
    metavar="DURATION",
    callback=parse_within,
    help="How far ahead: 30s, 10m, 2h (at most 24h).",
)
@click.option(
    "--provider",
    default=None,
    help="Only this provider's messages (those never attempted have no provider yet and are left out).",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help='One object: {"due": [{minute, provider, count}], "held": {provider: count}, '
    '"oldest_held": {message_id, since} or null}.',
)
@click.pass_context
def schedule(ctx: click.Context, within: timedelta, provider: str | None, as_json: bool) -> None:
    """What is due when: messages per minute (UTC) and provider over the next DURATION, held
    messages per provider, and the oldest held one.

    Received and overdue messages count in the current minute; in-flight ones are not due. A
    message's provider is the one it last tried (held: the one it waits for), null before its
    first attempt. The oldest held message is the one received first, and its "since" is when it
    was received: when it became held is not recorded in the read model.
    """
    found = read_schedule(settings_of(ctx), within, provider, open_store=open_store)
    click.echo(json.dumps(schedule_record(found), indent=2) if as_json else render(found, within))


def render(found: Schedule, within: timedelta) -> str:
    """The human table: due counts, then held counts and the oldest held message."""
    lines = _due_lines(found, within)
    if not found.held:
        lines.append("nothing held")
        return "\n".join(lines)
    lines.append("held: " + ", ".join(f"{name} {count}" for name, count in sorted(found.held.items())))
    if found.oldest_held is not None:
        oldest = found.oldest_held
        lines.append(f"oldest held: {oldest.message_id}, received {schedule_time(oldest.since)}")
    return "\n".join(lines)


def _due_lines(found: Schedule, within: timedelta) -> list[str]:
    if not found.due:
        return [f"nothing due within {_label(within)}"]
    width = max(len("provider"), *(len(item.provider or "-") for item in found.due))
    lines = [f"due within {_label(within)}:", f"{'minute (UTC)':<20}  {'provider':<{width}}  count"]
    for item in found.due:
        lines.append(f"{schedule_time(item.minute)}  {item.provider or '-':<{width}}  {item.count:>5}")
    return lines


def _label(window: timedelta) -> str:
    """``window`` as it would be typed: 2h, 10m, 90s."""
    seconds = int(window.total_seconds())
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
